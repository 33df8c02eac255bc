"""Linear evaluation of a Food-101 encoder with the SimCLR protocol.

  python main.py --config=configs/food101_linear.py --workdir=/tmp/simclr --mode=linear_eval

Train on the 75,750 `train` images, report top-1/top-5 (and kNN) on all 25,250 `validation`
images; 2048-d ResNet-50 features, 101 classes. SGD with Nesterov momentum 0.9, cosine
decay, no weight decay, 90 epochs, lr 0.1 x batch / 256 (SimCLR, Appendix B.5). The
encoder must match the one pretrained: this builds on configs/food101.py.
"""

from configs import food101


def get_config():
  config = food101.get_config()
  config.eval_split = "validation"
  config.linear_eval.batch_size = 1024
  config.linear_eval.epochs = 90
  config.linear_eval.learning_rate = 0.1 * 1024 / 256
  config.linear_eval.momentum = 0.9
  config.linear_eval.weight_decay = 0.0
  config.linear_eval.knn_k = 200
  config.linear_eval.knn_temperature = 0.07
  config.linear_eval.tsne_points = 5000
  return config
