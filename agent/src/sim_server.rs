//! Simulated OpenAI-compatible streaming server (in progress).
