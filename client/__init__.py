"""convserve's command-line client (`convserve predict`, `convserve explain`): stdlib only."""
