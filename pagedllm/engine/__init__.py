"""The engine: EngineCore (scheduler + model runner), the synchronous LLMEngine, output
processing (detokenization, stop strings, output kinds)."""
