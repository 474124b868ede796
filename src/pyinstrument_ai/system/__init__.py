"""What the machine did: run context for headers (:mod:`.context`) and timestamped samples
(:mod:`.sampler`). Imported only when a header is written or ``--sample`` is on."""
