"""`sia serve` and the pages: the OpenAI-compatible server, its wire format, the chat page and `--html` pages.

`server` (the app factory, the engine: one generation at a time behind a bounded queue), `guard` (who
may drive the server: Host, Origin, JSON bodies, the key, the body limit), `openai_api` (request models
derived from SteerConfig, responses, stream chunks, errors), `page` (one self-contained HTML page of
answers), `web/index.html` (the chat page, static and offline).

May import: errors, core, rewards.
"""
