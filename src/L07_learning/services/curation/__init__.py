"""Dataset curation helpers: leak-free stratified splits, statistics, export."""
