//! natt-sadb: the shared memory between `natt-control` and the dataplane, defined once.
//!
//! - The **SA segment** (`/dev/shm/<name>.sadb`): SA records, SPI indexes per direction
//!   and a longest-prefix-match index over outbound selectors. `natt-control` writes it
//!   (`Writer`, atomic batches, recovery, reclamation, compaction); dataplane workers
//!   read it (`Reader`) with no lock and no syscall, treating it as untrusted.
//! - The **dataplane segment** (`/dev/shm/<name>.dp`): what the dataplane writes for the
//!   control: worker quiescence reports, event rings, sequence-number reservations.
//!
//! Unsafe code is confined to `map`.

pub mod db;
pub mod dp;
pub mod index;
pub mod layout;
pub mod map;
pub mod query;
pub mod reader;
pub mod record;
pub mod stats;
pub mod view;
pub mod writer;

pub use db::{AttachError, Sadb};
pub use reader::{Found, Reader, Snapshot};
pub use writer::{Batch, Commit, Installed, Readers, WriteError, Writer};
