"""FeatureViews in Feast: the one translation of a FeatureView resource into Feast objects
(`translate`), and the store built from an operator-wide profile that applies and materialises
them (`store`). Importing this package does not import the Feast SDK; the functions do.
"""
