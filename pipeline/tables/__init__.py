"""Tables: read a user's table file (read), encode it for the GAN and decode samples back
(transform; a column at a time: columns, numeric), and the tables that installed packages ship,
for offline studies (shipped)."""

from pipeline.tables.columns import Span
from pipeline.tables.numeric import NUMERIC_ENCODINGS
from pipeline.tables.read import MAX_TABLE_BYTES, Table, read_table, split_rows
from pipeline.tables.transform import TableTransformer

__all__ = ["MAX_TABLE_BYTES", "NUMERIC_ENCODINGS", "Span", "Table", "TableTransformer",
           "read_table", "split_rows"]
