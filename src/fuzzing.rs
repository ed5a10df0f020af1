//! The bodies of the fuzz targets (`fuzz/`, for `cargo fuzz`), shared with the bounded fuzz test
//! that `cargo test` runs. Host only: no GPU is involved.

use crate::checkpoint::Checkpoint;
use crate::layout::{Layout, Leaf};

/// Parses arbitrary bytes as a checkpoint. It may be refused, never panic; whatever parses
/// writes back to bytes that parse to the same checkpoint, and fits its own layout and config.
pub fn checkpoint_bytes(data: &[u8]) {
    let Ok(checkpoint) = Checkpoint::from_bytes(data) else { return };
    let bytes = checkpoint.to_bytes().expect("a parsed checkpoint writes back");
    let again = Checkpoint::from_bytes(&bytes).expect("a written checkpoint parses");
    let bits =
        |c: &Checkpoint| -> Vec<u32> { c.main_ema.iter().chain(&c.aux_ema).flatten().map(|x| x.to_bits()).collect() };
    assert_eq!(bits(&again), bits(&checkpoint));
    assert_eq!(
        (&again.layout, again.steps, again.skipped_steps),
        (&checkpoint.layout, checkpoint.steps, checkpoint.skipped_steps)
    );
    checkpoint.check_fits(&checkpoint.layout, &checkpoint.config).expect("a checkpoint fits itself");
}

/// Reads arbitrary bytes as a list of leaves (name length, name, element count, optional
/// shape) and builds a layout from them. It may be refused, never panic; an accepted layout
/// has unique names, no empty leaf, and shapes whose product is the length.
pub fn layout_bytes(data: &[u8]) {
    let mut rest = data;
    let mut take = |n: usize| -> Option<&[u8]> {
        (rest.len() >= n).then(|| {
            let (head, tail) = rest.split_at(n);
            rest = tail;
            head
        })
    };
    let mut leaves = Vec::new();
    while let Some(header) = take(2) {
        let name = match take((header[0] % 8) as usize) {
            Some(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            None => break,
        };
        let Some(len) = take(4) else { break };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as u64;
        let shape = (header[1] % 4 != 0)
            .then(|| (0..header[1] % 4).map(|_| take(1).map_or(1, |b| b[0] as u64)).collect::<Vec<u64>>());
        leaves.push(Leaf { name, len, shape });
    }
    if let Ok(layout) = Layout::from_leaves(leaves) {
        let mut names = std::collections::HashSet::new();
        for leaf in layout.leaves() {
            assert!(names.insert(&leaf.name) && leaf.len > 0);
            if let Some(shape) = &leaf.shape {
                assert_eq!(shape.iter().product::<u64>(), leaf.len);
            }
        }
    }
}
