//! Images for devices without a registry (issue #15, first slice): which images each host runs,
//! where their bytes are on the operator's machine, what each host's containerd lacks, and the
//! script that receives, verifies and imports what is sent.
//!
//! * **Sources** (`imageSources` in the inventory, read by [`read_sources`], the only I/O here
//!   besides reading blobs while sending): OCI image-layout directories (`index.json`,
//!   `blobs/sha256/…`), OCI archives (the same as a tar, read in place by a small tar reader that
//!   records each member's byte offset, so a blob is streamed from the archive without
//!   extracting it) and `images.tsv` lists (`ref<TAB>archive…`, as `scripts/images list` writes).
//!   An image is found by its manifest's `io.containerd.image.name` or
//!   `org.opencontainers.image.ref.name` annotation (a full reference), compared in Docker's
//!   normalised form (`redis:7` is `docker.io/library/redis:7`, as containerd's CRI names it).
//! * **Needs** ([`needed`], pure): every container and init container image of the pods the
//!   rendered manifests put on each host (`nodeSelector` `kubernetes.io/hostname`, else the
//!   object's node), after the node's own ([`with_node_images`]: what kubeadm and Flannel run). [`resolve`] maps them to source images; an image no source has is an error
//!   naming the host, the object and the reference, raised before any host is contacted.
//! * **Plan** ([`plan_host`], pure): against the host's containerd facts (`ctr images ls`,
//!   `content ls`), one [`ImageChange`] per image the host does not have at that digest, with
//!   only the blobs its content store lacks (a blob shared by two images is sent once).
//! * **Apply** ([`receive_script`], pure): one script per host that receives the blobs on stdin
//!   into a staging directory under [`STAGING_DIR`], checks each one's size and SHA-256 as it
//!   arrives and moves it into the host's blob cache ([`crate::facts::IMAGE_BLOB_CACHE`]), and
//!   once all are there imports an archive of `oci-layout`, `index.json` and the cached blobs
//!   with `ctr -n k8s.io images import -` (containerd takes the blobs it already has from its
//!   content store), then empties the cache. A cut connection leaves only verified blobs in the
//!   cache and nothing imported; the next plan counts them as there (facts) and sends the rest.
//!
//! * **Device to device** (`relay`, `imagesFrom`): a host fetches what it lacks from another
//!   host of the inventory, which received it from the operator, over SSH with a key made for
//!   one apply and a forced command that can only print blobs.
//!
//! * **Platforms** (`platform`, pure): a multi-platform index is sent as the index and the one
//!   variant that suits the host (its facts' `uname -m`), never the other platforms' blobs; a
//!   single-platform image built for another platform is a plan error naming host and image.
//!
//! One module per part: `reference`, `sources` (the only I/O), `needs`, `platform`, `plan`, `removal`,
//! `transfer`, `relay`, with `error` shared by them; this facade only re-exports.

mod error;
mod needs;
mod plan;
mod platform;
mod reference;
mod registry;
mod relay;
mod removal;
mod sources;
mod transfer;

pub use crate::facts::IMPORTED_LABEL;
pub use error::ImageError;
pub use needs::{Need, Wanted, digests, for_machine, needed, resolve, with_node_images};
pub use plan::{ImageChange, human_bytes, plan_host};
pub use platform::Platform;
pub use reference::normalize;
pub use registry::{Registry, fetch_blobs, read_images};
pub use relay::{
    KEY_COMMENT, KEY_HOURS, RELAY_DIR, Relay, RelaySource, SERVE_SCRIPT, fetch_script, relay_blobs,
    relay_cleanup_script, relay_script, routes,
};
pub use removal::{
    ImageRemoval, REMOVED, not_in_use, parse_removed, plan_removals, remove_script, repository,
};
pub use sources::{Blob, Catalog, SourceImage, Variant, read_sources, tar_members};
pub use transfer::{
    IMPORTED, RECEIVED, Received, STAGING_DIR, index_json, parse_received, receive_script,
    send_input,
};

#[cfg(test)]
mod tests;
