"""``l2g-stream ui``: a web page for asking where and when an image appears, served by its own process.

The process speaks Kafka like any client (the worker stays headless): it sends the page's queries to the queries
topic and reads their answers from the results topic; matched frames are fetched back from the video topic. Split
by job:

* :mod:`~stream.ui.server`: HTTP routes, the session cookie, uploads, the live answer stream (server-sent events);
* :mod:`~stream.ui.sessions`: sessions and the queries each owns (unguessable ids, answers scoped to their
  session);
* :mod:`~stream.ui.bridge`: queries out, answers in, refused uploads dead-lettered;
* :mod:`~stream.ui.uploads`: what an upload must be (an image, within the size limits, sane fields);
* :mod:`~stream.ui.view`: the JSON the page lays out; :mod:`~stream.ui.page`: the page (inline script, no build);
* :mod:`~stream.ui.frames`: matched frames as JPEG (read back from Kafka by :mod:`stream.framefetch`).

Nothing is imported here, so ``import stream.ui.sessions`` stays light.
"""
