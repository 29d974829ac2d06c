"""Scale targets: the contract (:mod:`.base`) and its Nomad implementation (:mod:`.nomad`)."""
