"""Built-in data of the experiment runner: synthetic attention tasks (`tasks`) and the grain input pipeline (`pipeline`)."""
