"""``sdcompose serve``: the HTTP app (native ``/v1``, AUTOMATIC1111-compatible ``/sdapi/v1`` and ``/controlnet``,
the web UI at ``/``), its one job queue and its one security layer. Importing costs nothing."""
