"""KHaR's training: one loop with callbacks (:mod:`.loop`, :mod:`.callbacks`), adapter pretraining
(:mod:`.pretrain`), the MMSA-shaped trainer that runs both (:mod:`.trainer`), the optimizer and
schedule (:mod:`.optim`), seeding (:mod:`.seeding`) and one seed's checkpoint files
(:mod:`.checkpoints`).  Nothing here imports MMSA: everything comes in through the trainer's args."""
