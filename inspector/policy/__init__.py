"""The MTA policy path: the same domain rules, asked by the MTA itself.

After STARTTLS the packets show nothing, but the MTA still sees every
envelope in clear.  Postfix (``check_policy_service``) and Exim (an ACL
``${readsocket}``) ask this service about each ``MAIL FROM``/``RCPT TO``; a
blocked domain is answered with a reply that ends the session, and the
client is banned through the same ban pipeline as a packet verdict (event
``path`` = ``policy``), so its next connection is dropped in the kernel.

Modules: :mod:`.protocol` (the wire format, sans I/O), :mod:`.decide` (the
decision, pure), :mod:`.server` (sockets and bounds), :mod:`.settings`
(``[policy]``), :mod:`.service` (:class:`~.service.PolicyService`: the
server wired to the rules, the whitelist, the ban pipeline and the events, a
side component with ``start()``, ``close()`` and ``status()``), :mod:`.main`
(``inspector policy``).  This package file imports nothing, so that the
config can import :mod:`.settings` without a cycle.
"""

