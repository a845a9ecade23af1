"""chatmaild: the Python daemons of a chatmail relay.

``doveauth`` creates accounts on first login and answers Dovecot's
passdb/userdb lookups; ``filtermail`` lets only OpenPGP-encrypted mail
through Postfix.
"""

__version__ = "0.1.0"
