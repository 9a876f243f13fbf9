"""stream: the Kafka-native service (ingest, query, merge loops) around :mod:`l2g_core` and :mod:`plugins`.

Importing the package changes nothing process-wide: the entry points apply the process settings explicitly
(:func:`stream.runtime.configure_process` in ``l2g-stream``'s ``main`` before torch and FAISS load, and
``l2g_core.index.backend.configure_faiss`` in ``Worker.open``).
"""
