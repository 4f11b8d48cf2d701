"""OAuth2 access tokens for SMTP XOAUTH2 (Microsoft 365, Gmail): the ``[relays.<name>.oauth2]``
table (``settings``), the token source contract with its cache (``source``), a token from a
command (``command``) or from an OAuth2 token endpoint (``endpoint``), and the source that the
settings describe (``build``)."""
