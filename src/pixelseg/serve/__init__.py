"""``pixelseg serve``: a trained run as an HTTP service with a web page.

- :mod:`pixelseg.serve.uploads` reads and checks what clients send (size limits, formats,
  decompression bombs) and turns every problem into a 4xx JSON error;
- :mod:`pixelseg.serve.batcher` runs the model in one thread, batching the requests that
  wait, behind a bounded queue (overload answers 503 instead of growing memory);
- :mod:`pixelseg.serve.app` is the FastAPI application: ``/health``, ``/model``,
  ``/predict``, the page at ``/`` and the API docs at ``/docs``, all served locally.

FastAPI (on Starlette) with uvicorn is the usual ASGI stack for Python model services: typed
query parameters, OpenAPI docs for free, and a server that runs the app in several worker
processes. It is an optional extra: ``pip install 'pixelseg[serve]'``.
"""
