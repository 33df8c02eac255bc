"""The methods' objectives as pure functions, each on one device and, where the loss couples
examples across the batch, a shard_map form equal to it in value and gradients (local
anchors against gathered keys, gradients through the gather):

  nt_xent.py    SimCLR's NT-Xent (`nt_xent`, `sharded_nt_xent`)
  byol.py       BYOL's normalised regression (`byol_loss`)
  infonce.py    MoCo v3's InfoNCE (`infonce_loss`, `sharded_infonce`)
  vicreg.py     VICReg (`vicreg_loss`, `sharded_vicreg`, and its terms)
  normalize.py  `l2_normalize`, the cosine geometry they share
"""
