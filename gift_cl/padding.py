"""The logit of the classes a sample's task does not have, shared by the models and by what loads or exports
them (one value everywhere: a loaded or exported model pads exactly as the trained one)."""

# Avalanche 0.6 pads with 0, which lets phantom classes win argmax and enter the loss (avalanche-0.6-notes §2.2).
PAD_LOGIT = -1e9
