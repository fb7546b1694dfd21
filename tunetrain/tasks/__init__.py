"""Built-in tasks, each loadable by name as `"tunetrain.tasks.MODULE:FACTORY"`.

- `tunetrain.tasks.mnist1d:mlp`: MNIST-1D with a multilayer perceptron (params `hidden_size`, `num_layers`,
  `dropout`); about 69% test accuracy, the paper's MLP figure.
- `tunetrain.tasks.mnist1d:cnn`: MNIST-1D with a 1-D convolutional network (params `channels`, `kernel_size`,
  `num_layers`, `dropout`); about 95% test accuracy in a few seconds of CPU training.

Nothing is imported here: a task module is imported only when a task is loaded.
"""
