"""The built-in SMTP relay (aiosmtplib): settings, the transaction with pipelining, OAuth2."""
