"""AlexNet (Krizhevsky, Sutskever & Hinton, NeurIPS 2012) in Keras 3 on TensorFlow."""
