"""The strategy x data-fraction study: what transfer learning buys, measured cell by cell."""
