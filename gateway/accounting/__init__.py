"""Cost accounting: prices (``pricing``), token counts (``gateway.tokens``) and the usage they
turn into (``usage``). The ``token_accounting`` policy puts them together."""
