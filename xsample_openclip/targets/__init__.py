"""Caption targets: the side data both X-Sample losses are built from.

The training loop hands a loss the batch's token ids (the loader's CPU tensor); this package turns them
into unit caption embeddings, either by decoding and embedding them with a frozen sentence encoder
(``embedders.OnlineCaptionEmbeddings``) or by looking them up in a precomputed table
(``embedders.TableCaptionEmbeddings``). ``flags`` holds the ``--xsample-*`` flags and start-up checks
that both losses share; ``calibrate`` chooses tau_s from the run's own captions.
"""
