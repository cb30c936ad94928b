"""Generation: chat prompts -> completions, through a Ray Data actor pool of engines."""
