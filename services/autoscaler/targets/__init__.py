"""Scale targets: the contract in :mod:`.base`, one module per implementation (:mod:`.nomad`)."""
