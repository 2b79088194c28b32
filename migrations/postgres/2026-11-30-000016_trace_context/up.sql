-- The W3C trace context (`traceparent`, and `tracestate` when any) of the request that
-- queued an execution: the worker that runs it continues the same trace, so one trace
-- shows request -> enqueue -> claim -> each step -> completion across processes.
ALTER TABLE executions ADD COLUMN trace_context TEXT;
