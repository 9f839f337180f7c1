"""What each kind of task does on the agent beyond a script: deploy, packages, files, health."""
