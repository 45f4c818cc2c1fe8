"""`rtml stream`: events from a stream -> window aggregates in the online store -> the runtime's
prediction -> a result on an output stream, at least once (docs/streaming.md).

- events.py: an event's fields, its time, the request it becomes, the result it gives (pure);
- windows.lua, windowstore.py: the buckets of the view's aggregations, updated with the event's
  "seen" marker and written to Feast's Redis layout in one atomic script;
- source.py: the stream behind a small interface (Redis Streams; a Kafka source would be
  another implementation);
- consumer.py: the loop (bounded in flight, reclaim, ack after publish); metrics.py its metrics.
"""
