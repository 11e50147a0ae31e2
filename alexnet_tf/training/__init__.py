"""How the network is trained (section 5): the optimizer, the plateau schedule, the callbacks of `model.fit`,
TensorBoard, what keeps MODEL_DIR whole, and the distribution strategies (one device, mirrored, the paper's two
towers, many machines)."""
