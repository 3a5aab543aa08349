"""The test harness that ships with sales-velocity, for our tests, the benchmark and plugins.

* ``contract``: ``check_stream``/``check_connector``, the rules every connector's
  deal stream must meet; an outside connector runs them on its own pulls;
* ``fake_hubspot``/``fake_pipedrive``: stateful fakes of the two CRM APIs on
  127.0.0.1 (pagination, caps, 429s, deletes, slow answers), served by werkzeug;
* ``payloads/``: the documented API payloads the fakes answer with.

The fakes need ``werkzeug`` (in the ``test`` extra).
"""

from pathlib import Path

PAYLOADS = Path(__file__).parent / "payloads"
"""The folder of recorded API payloads: ``hubspot/`` and ``pipedrive/``."""
