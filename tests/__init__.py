"""rtml tests (a package so that conftest can import shared fixtures from tests.*)."""
