"""Model cards: a model's card rendered for people (``card.py``) and ``lungseg models`` (``cli.py``).

Above :mod:`lungseg_monai.inference` (it reads models the way inference does); the shipped models
themselves and their names live below it, in :mod:`lungseg_monai.pretrained`.
"""
