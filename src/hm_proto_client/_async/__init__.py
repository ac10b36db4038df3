"""The clients: written once as async source (``_async``), generated as blocking code (``_sync``)."""
