"""Reading and writing data: prompt and pair readers, the records every stage passes on, run folders
with atomic chunk commits, and byte-exact text files."""
