"""The ground floor of sales-velocity: what every other package stands on.

It imports nothing of ours, so every package may import it:

* ``errors``: the whole error tree, drawn in its docstring;
* ``config``: ``TimeZoneName``, pydantic errors as located ``ConfigProblem``s,
  ``${ENV}`` expansion, the secrets inside settings;
* ``plugins``: entry-point registries (connectors and channels are plugins);
* ``http``: the one place that owns HTTP failure handling (timeouts, retries,
  ``Retry-After``, client-side rate limits);
* ``logs``: the structlog pipeline and the secret redactor;
* ``addresses``: whether a value is one usable e-mail address (owners, recipients);
* ``schedule``: crontab lines, the ``[schedule]`` settings and the scheduler;
* ``testing``: the harness shipped for connector authors: the contract suite
  and stateful fake HubSpot and Pipedrive servers (it alone imports the
  connectors it fakes, and only when used).
"""
