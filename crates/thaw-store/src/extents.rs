//! The data extents of a sparse file (`SEEK_DATA`/`SEEK_HOLE`), walked in order: what
//! ingest asks of each chunk before reading it, so that holes are never read.

use std::fs::File;

/// Walks the data extents of a file in order, so each chunk can be asked
/// whether it overlaps data; holes are never read.
pub(crate) struct DataExtents<'f> {
    file: &'f File,
    /// The current (or next) data extent, `[start, end)`; `u64::MAX` when none is left.
    start: u64,
    end: u64,
    /// The file system cannot report holes: treat everything as data.
    all_data: bool,
}

impl<'f> DataExtents<'f> {
    pub(crate) fn new(file: &'f File) -> DataExtents<'f> {
        DataExtents {
            file,
            start: 0,
            end: 0,
            all_data: false,
        }
    }

    /// Whether `[start, end)` holds any data. Calls must come in increasing order.
    pub(crate) fn overlaps(&mut self, start: u64, end: u64) -> std::io::Result<bool> {
        use rustix::fs::{seek, SeekFrom};
        use rustix::io::Errno;
        if self.all_data {
            return Ok(true);
        }
        if self.end <= start {
            match seek(self.file, SeekFrom::Data(start)) {
                Ok(data) => {
                    self.start = data;
                    self.end = seek(self.file, SeekFrom::Hole(data))?;
                }
                Err(Errno::NXIO) => (self.start, self.end) = (u64::MAX, u64::MAX),
                Err(Errno::INVAL | Errno::OPNOTSUPP) => {
                    self.all_data = true;
                    return Ok(true);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(self.start < end)
    }
}
