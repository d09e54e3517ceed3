"""``paddle-glm serve``: an HTTP server with an OpenAI-compatible completions subset, batching and a web page.

* ``rows``: one completion row (prompt, settings, its text as tokens arrive) and the
  streamer that routes a batch's tokens to its rows;
* ``runner``: the model side (a batch of rows through ``generate``, a ``fill_blanks`` job);
* ``scheduler``: the bounded queue and the single model thread that batches waiting rows;
* ``protocol``: request models, validation and OpenAI-style errors;
* ``middleware``: the body-size limit and the API key;
* ``app``: the FastAPI routes; ``static/index.html``: the page.

Needs the ``serve`` extra (FastAPI and uvicorn).
"""
