"""Two-stage ShareGPT4V training: arguments, preprocessing, data, trainable sets, optimizer groups, saving, driver."""
