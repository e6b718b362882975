"""Decision support: model cards and the registry, input gates, preprocessing,
the inference runtime (off the event loop) and the one overlay renderer."""
