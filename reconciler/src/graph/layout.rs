//! A small layered (Sugiyama-style) layout for [`Graph`], left to right, one horizontal band
//! per device:
//!
//! 1. cycles broken by reversing DFS back edges (nodes and edges in graph order);
//! 2. layers by longest path, sources then pulled right next to their first successor;
//! 3. edges longer than one layer get a dummy vertex per layer crossed (in the source's band),
//!    so they run through free slots instead of across boxes;
//! 4. order within each (band, layer) cell by barycenter sweeps, keeping the order with the
//!    fewest crossings;
//! 5. columns as wide as their widest box plus room for the edge labels after them; in each
//!    band, vertices moved towards their neighbours' centres (same band) without overlapping.
//!
//! Text is measured as monospace (the SVG asks for a monospace font), so boxes fit their
//! labels without font metrics. Every step is deterministic: no hashing, ties broken by index.

use std::collections::BTreeSet;

use super::{Graph, Node};

/// Title line of a node (bold) and of the legend.
pub const FONT: f64 = 12.0;
pub const CHAR_W: f64 = 7.3;
pub const LINE_H: f64 = 16.0;
/// Other lines of nodes, device details and edge labels.
pub const SMALL_FONT: f64 = 11.0;
pub const SMALL_CHAR_W: f64 = 6.7;
pub const SMALL_LINE_H: f64 = 14.0;
/// Device titles.
pub const DEVICE_FONT: f64 = 13.0;
pub const DEVICE_CHAR_W: f64 = 7.9;
/// The drawing's title.
pub const TITLE_FONT: f64 = 16.0;
pub const TITLE_CHAR_W: f64 = 9.7;

pub const MARGIN: f64 = 16.0;
/// Height taken by the drawing's title above the first band.
pub const TITLE_H: f64 = 34.0;
pub const PAD_X: f64 = 10.0;
pub const PAD_Y: f64 = 7.0;
const BAND_PAD_X: f64 = 18.0;
const BAND_PAD_BOTTOM: f64 = 16.0;
const BAND_GAP: f64 = 22.0;
const VGAP: f64 = 20.0;
const MIN_GAP: f64 = 60.0;
const DUMMY_H: f64 = 8.0;
/// Horizontal reach of a self-loop beyond its box.
const LOOP_W: f64 = 36.0;
/// How far back edges sag below the straight line, so a 2-cycle shows as two lines.
const BACK_SAG: f64 = 22.0;
const SWEEPS: usize = 12;
/// Above this many dummy vertices long edges are drawn without them.
const MAX_DUMMIES: usize = 20_000;
/// How often a label that meets another is moved down before it is left where it is.
const PUSH_LIMIT: usize = 50;
const PLACE_PASSES: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pt {
    pub x: f64,
    pub y: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl Rect {
    pub fn right(&self) -> f64 {
        self.x + self.w
    }
    pub fn bottom(&self) -> f64 {
        self.y + self.h
    }
    pub fn cy(&self) -> f64 {
        self.y + self.h / 2.0
    }
    fn overlaps(&self, o: &Rect) -> bool {
        self.x < o.right() && o.x < self.right() && self.y < o.bottom() && o.y < self.bottom()
    }
}

/// A cubic Bézier segment (a straight line has its control points on its ends).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Curve {
    pub from: Pt,
    pub c1: Pt,
    pub c2: Pt,
    pub to: Pt,
}

impl Curve {
    fn line(from: Pt, to: Pt) -> Curve {
        Curve {
            from,
            c1: from,
            c2: to,
            to,
        }
    }
    fn at(&self, t: f64) -> Pt {
        let u = 1.0 - t;
        let (a, b, c, d) = (u * u * u, 3.0 * u * u * t, 3.0 * u * t * t, t * t * t);
        Pt {
            x: a * self.from.x + b * self.c1.x + c * self.c2.x + d * self.to.x,
            y: a * self.from.y + b * self.c1.y + c * self.c2.y + d * self.to.y,
        }
    }
    /// The point of the curve at horizontal position `x` (its x is monotonic: control points
    /// lie between the ends), found by bisection.
    fn at_x(&self, x: f64) -> Pt {
        let rising = self.to.x >= self.from.x;
        let (mut lo, mut hi) = (0.0, 1.0);
        for _ in 0..40 {
            let mid = (lo + hi) / 2.0;
            if (self.at(mid).x < x) == rising {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        self.at((lo + hi) / 2.0)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EdgeShape {
    pub curves: Vec<Curve>,
    /// Where the label box goes (its lines are [`super::Edge::label_lines`]).
    pub label: Rect,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Right and bottom end of the bands (the legend goes below).
    pub width: f64,
    pub height: f64,
    /// Per device, per node, per edge: same indices as the graph.
    pub devices: Vec<Rect>,
    pub nodes: Vec<Rect>,
    pub edges: Vec<EdgeShape>,
}

/// Width of `s` at `char_w` per character (East Asian wide characters count twice).
pub fn text_width(s: &str, char_w: f64) -> f64 {
    s.chars()
        .map(|c| if is_wide(c) { 2.0 } else { 1.0 })
        .sum::<f64>()
        * char_w
}

fn is_wide(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x115F | 0x2E80..=0x303E | 0x3041..=0x33FF | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF | 0xA000..=0xA4CF | 0xAC00..=0xD7A3 | 0xF900..=0xFAFF
        | 0xFE30..=0xFE4F | 0xFF00..=0xFF60 | 0xFFE0..=0xFFE6 | 0x1F300..=0x1FAFF
        | 0x20000..=0x3FFFD)
}

/// Size of a node's box.
pub fn node_size(n: &Node) -> (f64, f64) {
    let l = n.label();
    let w = l
        .lines
        .iter()
        .map(|s| text_width(s, SMALL_CHAR_W))
        .fold(text_width(&l.title, CHAR_W), f64::max);
    (
        (w + 2.0 * PAD_X).ceil(),
        2.0 * PAD_Y + LINE_H + l.lines.len() as f64 * SMALL_LINE_H,
    )
}

/// Size of an edge's label box.
pub fn label_size(lines: &[String]) -> (f64, f64) {
    let w = lines
        .iter()
        .map(|s| text_width(s, SMALL_CHAR_W))
        .fold(0.0, f64::max);
    ((w + 8.0).ceil(), lines.len() as f64 * SMALL_LINE_H + 4.0)
}

/// Height of a device's header (title and details).
pub fn device_header_h(details: usize) -> f64 {
    26.0 + details as f64 * SMALL_LINE_H + 8.0
}

/// One vertex of the layered graph: a node, or a dummy on a long edge.
#[derive(Debug, Clone)]
struct Vx {
    band: usize,
    layer: usize,
    w: f64,
    h: f64,
}

pub fn layout(g: &Graph) -> Layout {
    let n = g.nodes.len();
    let bands = g.devices.len();

    // 1. Cycle breaking.
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, e) in g.edges.iter().enumerate() {
        if e.from != e.to {
            out[e.from].push(i);
        }
    }
    let reversed = back_edges(g, &out);
    // Edge i in the acyclic direction (None: self-loop).
    let dag: Vec<Option<(usize, usize)>> = g
        .edges
        .iter()
        .zip(&reversed)
        .map(|(e, &r)| match (e.from == e.to, r) {
            (true, _) => None,
            (false, false) => Some((e.from, e.to)),
            (false, true) => Some((e.to, e.from)),
        })
        .collect();

    // 2. Layers.
    let node_layer = layers(n, &dag);
    let layer_count = node_layer.iter().max().map_or(1, |m| m + 1);

    // 3. Vertices and dummy chains.
    let mut vx: Vec<Vx> = g
        .nodes
        .iter()
        .zip(&node_layer)
        .map(|(node, &layer)| {
            let (w, h) = node_size(node);
            Vx {
                band: node.device,
                layer,
                w,
                h,
            }
        })
        .collect();
    // Dummies cost one vertex per layer crossed: past MAX_DUMMIES (a graph no one can read
    // anyway) long edges are drawn straight across, so time and output stay bounded.
    let spans: usize = dag
        .iter()
        .flatten()
        .map(|&(a, b)| node_layer[b] - node_layer[a] - 1)
        .sum();
    let with_dummies = spans <= MAX_DUMMIES;
    let mut chains: Vec<Vec<usize>> = Vec::with_capacity(dag.len());
    for d in &dag {
        let Some((a, b)) = *d else {
            chains.push(Vec::new());
            continue;
        };
        let mut chain = vec![a];
        let crossed = if with_dummies {
            vx[a].layer + 1..vx[b].layer
        } else {
            0..0
        };
        for layer in crossed {
            vx.push(Vx {
                band: vx[a].band,
                layer,
                w: 0.0,
                h: DUMMY_H,
            });
            chain.push(vx.len() - 1);
        }
        chain.push(b);
        chains.push(chain);
    }
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); vx.len()];
    let mut succs: Vec<Vec<usize>> = vec![Vec::new(); vx.len()];
    for c in &chains {
        for w in c.windows(2) {
            succs[w[0]].push(w[1]);
            preds[w[1]].push(w[0]);
        }
    }

    // 4. Order within cells.
    let mut cells: Vec<Vec<Vec<usize>>> = vec![vec![Vec::new(); layer_count]; bands];
    for (i, v) in vx.iter().enumerate() {
        cells[v.band][v.layer].push(i);
    }
    order_cells(&mut cells, &preds, &succs, vx.len());

    // 5. Coordinates: columns...
    let mut colw = vec![0.0f64; layer_count];
    for v in vx.iter().filter(|v| v.w > 0.0) {
        colw[v.layer] = colw[v.layer].max(v.w);
    }
    for w in &mut colw {
        if *w == 0.0 {
            *w = 16.0;
        }
    }
    let mut gap = vec![MIN_GAP; layer_count];
    gap[layer_count - 1] = 0.0;
    for (i, e) in g.edges.iter().enumerate() {
        let (lw, _) = label_size(&e.label_lines());
        let l_from = node_layer[e.from];
        let (at, need) = if e.from == e.to {
            (l_from, LOOP_W + lw + 12.0)
        } else if reversed[i] {
            (l_from - 1, lw + 36.0)
        } else {
            (l_from, lw + 36.0)
        };
        gap[at] = gap[at].max(need);
    }
    let mut col_x = vec![MARGIN + BAND_PAD_X; layer_count];
    for l in 1..layer_count {
        col_x[l] = col_x[l - 1] + colw[l - 1] + gap[l - 1];
    }
    let content_right = col_x[layer_count - 1] + colw[layer_count - 1] + gap[layer_count - 1];
    let header_w = g
        .devices
        .iter()
        .map(|d| {
            d.details
                .iter()
                .map(|s| text_width(s, SMALL_CHAR_W))
                .fold(text_width(&d.title, DEVICE_CHAR_W), f64::max)
        })
        .fold(0.0, f64::max);
    let band_w = (content_right + BAND_PAD_X - MARGIN).max(header_w + 2.0 * BAND_PAD_X);

    // ... then rows, band by band.
    let mut x = vec![0.0; vx.len()];
    for (i, v) in vx.iter().enumerate() {
        x[i] = col_x[v.layer] + (colw[v.layer] - v.w) / 2.0;
    }
    let mut y = vec![0.0; vx.len()];
    let mut devices = Vec::with_capacity(bands);
    let mut top = MARGIN + TITLE_H;
    for (b, band_cells) in cells.iter().enumerate() {
        let header = device_header_h(g.devices[b].details.len());
        let content_top = top + header;
        place_band(band_cells, &vx, &preds, &succs, &mut y, content_top);
        let bottom = band_cells
            .iter()
            .flatten()
            .map(|&v| y[v] + vx[v].h)
            .fold(content_top + 20.0, f64::max);
        let rect = Rect {
            x: MARGIN,
            y: top,
            w: band_w,
            h: bottom + BAND_PAD_BOTTOM - top,
        };
        top = rect.bottom() + BAND_GAP;
        devices.push(rect);
    }
    let rect_of = |v: usize| Rect {
        x: x[v],
        y: y[v],
        w: vx[v].w,
        h: vx[v].h,
    };
    let nodes: Vec<Rect> = (0..n).map(rect_of).collect();

    // Edges.
    let mut edges = Vec::with_capacity(g.edges.len());
    // Labels sit in a gap between two columns: they can only meet labels in the same gap and
    // boxes of the two columns beside it.
    let mut placed: Vec<Vec<Rect>> = vec![Vec::new(); layer_count];
    let mut column_boxes: Vec<Vec<Rect>> = vec![Vec::new(); layer_count];
    for (r, &l) in nodes.iter().zip(&node_layer) {
        column_boxes[l].push(*r);
    }
    for (i, e) in g.edges.iter().enumerate() {
        let lines = e.label_lines();
        let (lw, lh) = label_size(&lines);
        let at = |p: Pt| Rect {
            x: p.x - lw / 2.0,
            y: p.y - lh / 2.0,
            w: lw,
            h: lh,
        };
        // The gap the edge leaves its source through (a back edge runs leftwards).
        let gap_at = if e.from != e.to && reversed[i] {
            node_layer[e.from] - 1
        } else {
            node_layer[e.from]
        };
        let (curves, candidates) = if e.from == e.to {
            let r = nodes[e.from];
            let c = Curve {
                from: Pt {
                    x: r.right(),
                    y: r.cy() - 6.0,
                },
                c1: Pt {
                    x: r.right() + LOOP_W,
                    y: r.cy() - 30.0,
                },
                c2: Pt {
                    x: r.right() + LOOP_W,
                    y: r.cy() + 30.0,
                },
                to: Pt {
                    x: r.right(),
                    y: r.cy() + 6.0,
                },
            };
            let anchor = Pt {
                x: r.right() + LOOP_W + 6.0 + lw / 2.0,
                y: r.cy(),
            };
            (vec![c], vec![at(anchor)])
        } else {
            let chain = &chains[i];
            let curves = if reversed[i] {
                back_path(chain, &rect_of, &col_x, &colw, &vx)
            } else {
                forward_path(chain, &rect_of, &col_x, &colw, &vx)
            };
            // On the edge, in the gap it leaves its source through: the middle first, then
            // further along or back, so labels of edges from one box do not meet.
            let gap_x = col_x[gap_at] + colw[gap_at];
            let candidates = [0.5, 0.7, 0.3, 0.85, 0.15]
                .iter()
                .map(|f| at(curves[0].at_x(gap_x + gap[gap_at] * f)))
                .collect();
            (curves, candidates)
        };
        let near: Vec<&Rect> = placed[gap_at]
            .iter()
            .chain(&column_boxes[gap_at])
            .chain(column_boxes.get(gap_at + 1).into_iter().flatten())
            .collect();
        let meets = |r: &Rect| near.iter().find(|p| p.overlaps(r)).copied();
        let mut label = match candidates.iter().find(|r| meets(r).is_none()) {
            Some(r) => *r,
            None => candidates[0],
        };
        // Crowded: push down below whatever it meets (a bounded number of times).
        for _ in 0..PUSH_LIMIT {
            match meets(&label) {
                Some(p) => label.y = p.bottom() + 2.0,
                None => break,
            }
        }
        placed[gap_at].push(label);
        edges.push(EdgeShape { curves, label });
    }

    let bottom = devices.last().map_or(MARGIN + TITLE_H, |d| d.bottom());
    Layout {
        width: MARGIN + band_w,
        height: bottom,
        devices,
        nodes,
        edges,
    }
}

/// Edges that close a cycle in a DFS from every node in index order (out-edges in edge order).
fn back_edges(g: &Graph, out: &[Vec<usize>]) -> Vec<bool> {
    let n = g.nodes.len();
    // 0 unvisited, 1 on the DFS stack, 2 finished.
    let mut state = vec![0u8; n];
    let mut reversed = vec![false; g.edges.len()];
    for root in 0..n {
        if state[root] != 0 {
            continue;
        }
        state[root] = 1;
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        while let Some(top) = stack.last_mut() {
            let v = top.0;
            if let Some(&e) = out[v].get(top.1) {
                top.1 += 1;
                let w = g.edges[e].to;
                match state[w] {
                    0 => {
                        state[w] = 1;
                        stack.push((w, 0));
                    }
                    1 => reversed[e] = true,
                    _ => {}
                }
            } else {
                state[v] = 2;
                stack.pop();
            }
        }
    }
    reversed
}

/// Longest-path layers of the acyclic edges; a source then moves right to just before its
/// nearest successor, so it does not sit layers away from what it feeds.
fn layers(n: usize, dag: &[Option<(usize, usize)>]) -> Vec<usize> {
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut indeg = vec![0usize; n];
    for &(a, b) in dag.iter().flatten() {
        succ[a].push(b);
        indeg[b] += 1;
    }
    let sources: Vec<bool> = indeg.iter().map(|&d| d == 0).collect();
    let mut layer = vec![0usize; n];
    let mut ready: BTreeSet<usize> = (0..n).filter(|&v| indeg[v] == 0).collect();
    while let Some(v) = ready.pop_first() {
        for &w in &succ[v] {
            layer[w] = layer[w].max(layer[v] + 1);
            indeg[w] -= 1;
            if indeg[w] == 0 {
                ready.insert(w);
            }
        }
    }
    for v in 0..n {
        if sources[v]
            && let Some(min) = succ[v].iter().map(|&w| layer[w]).min()
        {
            layer[v] = min - 1;
        }
    }
    layer
}

/// Barycenter sweeps (down with predecessors, up with successors) over every band's cells;
/// the order with the fewest crossings wins.
fn order_cells(
    cells: &mut [Vec<Vec<usize>>],
    preds: &[Vec<usize>],
    succs: &[Vec<usize>],
    count: usize,
) {
    let layer_count = cells.first().map_or(0, Vec::len);
    // A vertex's global rank: bands stacked, each as tall as its fullest cell. Reordering
    // within a cell never changes a band's offset.
    let mut offset = Vec::with_capacity(cells.len());
    let mut acc = 0usize;
    for band in cells.iter() {
        offset.push(acc);
        acc += band.iter().map(Vec::len).max().unwrap_or(0);
    }
    let mut pos = vec![0usize; count];
    let set_pos = |cells: &[Vec<Vec<usize>>], pos: &mut Vec<usize>| {
        for (b, band) in cells.iter().enumerate() {
            for cell in band {
                for (i, &v) in cell.iter().enumerate() {
                    pos[v] = offset[b] + i;
                }
            }
        }
    };
    set_pos(cells, &mut pos);
    let mut best = cells.to_vec();
    let mut best_crossings = crossings(cells, succs, &pos, layer_count);
    for sweep in 0..SWEEPS {
        let down = sweep % 2 == 0;
        let order: Vec<usize> = if down {
            (1..layer_count).collect()
        } else {
            (0..layer_count.saturating_sub(1)).rev().collect()
        };
        for l in order {
            for band in cells.iter_mut() {
                let cell = &mut band[l];
                let neighbours = if down { preds } else { succs };
                let mut keyed: Vec<(f64, usize)> = cell
                    .iter()
                    .map(|&v| {
                        let nb = &neighbours[v];
                        let key = if nb.is_empty() {
                            pos[v] as f64
                        } else {
                            nb.iter().map(|&w| pos[w] as f64).sum::<f64>() / nb.len() as f64
                        };
                        (key, v)
                    })
                    .collect();
                keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
                let base = cell.iter().map(|&v| pos[v]).min().unwrap_or(0);
                for (i, (_, v)) in keyed.iter().enumerate() {
                    cell[i] = *v;
                    pos[*v] = base + i;
                }
            }
        }
        let c = crossings(cells, succs, &pos, layer_count);
        if c < best_crossings {
            best_crossings = c;
            best = cells.to_vec();
        }
    }
    cells.clone_from_slice(&best);
}

/// Edge crossings between consecutive layers: inversions of (source rank, target rank)
/// pairs, counted by merge sort.
fn crossings(
    cells: &[Vec<Vec<usize>>],
    succs: &[Vec<usize>],
    pos: &[usize],
    layers: usize,
) -> usize {
    let mut total = 0;
    for l in 0..layers.saturating_sub(1) {
        let mut pairs: Vec<(usize, usize)> = Vec::new();
        for band in cells {
            for &v in &band[l] {
                for &w in &succs[v] {
                    pairs.push((pos[v], pos[w]));
                }
            }
        }
        pairs.sort_unstable();
        let mut ys: Vec<usize> = pairs.iter().map(|p| p.1).collect();
        total += inversions(&mut ys);
    }
    total
}

/// Strict inversions (i < j, a[i] > a[j]); sorts `a`.
fn inversions(a: &mut [usize]) -> usize {
    if a.len() < 2 {
        return 0;
    }
    let mid = a.len() / 2;
    let mut count = inversions(&mut a[..mid]) + inversions(&mut a[mid..]);
    let mut merged = Vec::with_capacity(a.len());
    let (mut i, mut j) = (0, mid);
    while i < mid && j < a.len() {
        if a[i] <= a[j] {
            merged.push(a[i]);
            i += 1;
        } else {
            merged.push(a[j]);
            count += mid - i;
            j += 1;
        }
    }
    merged.extend_from_slice(&a[i..mid]);
    merged.extend_from_slice(&a[j..]);
    a.copy_from_slice(&merged);
    count
}

/// Vertical positions in one band: stacked in cell order, then each cell fitted to its
/// neighbours' centres in the same band (predecessors, successors, then both), least squares
/// under the cell's order and spacing, never above the band's content; finally the band is
/// moved up to its content top.
fn place_band(
    cells: &[Vec<usize>],
    vx: &[Vx],
    preds: &[Vec<usize>],
    succs: &[Vec<usize>],
    y: &mut [f64],
    content_top: f64,
) {
    for cell in cells {
        let mut next = content_top;
        for &v in cell {
            y[v] = next;
            next += vx[v].h + VGAP;
        }
    }
    let band = cells.iter().flatten().next().map(|&v| vx[v].band);
    for pass in 0..PLACE_PASSES + 2 {
        let (down, up) = match pass {
            p if p >= PLACE_PASSES => (true, true),
            p => (p % 2 == 0, p % 2 == 1),
        };
        let order: Vec<usize> = if down && !up {
            (0..cells.len()).collect()
        } else {
            (0..cells.len()).rev().collect()
        };
        for l in order {
            let cell = &cells[l];
            let desired: Vec<f64> = cell
                .iter()
                .map(|&v| {
                    let nb = down
                        .then_some(&preds[v])
                        .into_iter()
                        .chain(up.then_some(&succs[v]))
                        .flatten()
                        .filter(|&&w| Some(vx[w].band) == band);
                    let (sum, count) = nb.fold((0.0, 0usize), |(s, c), &w| {
                        (s + y[w] + vx[w].h / 2.0, c + 1)
                    });
                    if count == 0 {
                        y[v]
                    } else {
                        sum / count as f64 - vx[v].h / 2.0
                    }
                })
                .collect();
            let heights: Vec<f64> = cell.iter().map(|&v| vx[v].h).collect();
            for (&v, top) in cell.iter().zip(fit(&desired, &heights, content_top)) {
                y[v] = top;
            }
        }
    }
    let min = cells
        .iter()
        .flatten()
        .map(|&v| y[v])
        .fold(f64::INFINITY, f64::min);
    if min.is_finite() && min > content_top {
        for &v in cells.iter().flatten() {
            y[v] -= min - content_top;
        }
    }
}

/// Tops closest (least squares) to `desired`, keeping the order with `VGAP` between boxes and
/// none above `min_top`: with each top shifted by the heights above it, this is isotonic
/// regression, solved by pooling adjacent violators.
fn fit(desired: &[f64], heights: &[f64], min_top: f64) -> Vec<f64> {
    let mut offset = Vec::with_capacity(desired.len());
    let mut acc = 0.0;
    for h in heights {
        offset.push(acc);
        acc += h + VGAP;
    }
    // Blocks of (sum, count) whose means increase.
    let mut blocks: Vec<(f64, usize)> = Vec::new();
    for (d, o) in desired.iter().zip(&offset) {
        blocks.push((d - o, 1));
        while let [.., (s1, c1), (s2, c2)] = blocks[..] {
            if s1 / c1 as f64 <= s2 / c2 as f64 {
                break;
            }
            blocks.pop();
            blocks.pop();
            blocks.push((s1 + s2, c1 + c2));
        }
    }
    let mut out = Vec::with_capacity(desired.len());
    for (sum, count) in blocks {
        let q = (sum / count as f64).max(min_top);
        for _ in 0..count {
            out.push(q + offset[out.len()]);
        }
    }
    out
}

/// Left to right through the dummies: a curve across each gap, a straight line across each
/// dummy's column.
fn forward_path(
    chain: &[usize],
    rect: &dyn Fn(usize) -> Rect,
    col_x: &[f64],
    colw: &[f64],
    vx: &[Vx],
) -> Vec<Curve> {
    let mut curves = Vec::new();
    let first = rect(chain[0]);
    let mut at = Pt {
        x: first.right(),
        y: first.cy(),
    };
    for (k, &v) in chain.iter().enumerate().skip(1) {
        let r = rect(v);
        let last = k == chain.len() - 1;
        let entry = if last {
            Pt { x: r.x, y: r.cy() }
        } else {
            Pt {
                x: col_x[vx[v].layer],
                y: r.cy(),
            }
        };
        curves.push(s_curve(at, entry, 0.0));
        if !last {
            let exit = Pt {
                x: col_x[vx[v].layer] + colw[vx[v].layer],
                y: r.cy(),
            };
            curves.push(Curve::line(entry, exit));
            at = exit;
        }
    }
    curves
}

/// A back edge (closing a cycle) runs right to left: out of its source's left side, through
/// the dummies in reverse, into its target's right side, sagging so it does not cover the
/// forward edge of a 2-cycle.
fn back_path(
    chain: &[usize],
    rect: &dyn Fn(usize) -> Rect,
    col_x: &[f64],
    colw: &[f64],
    vx: &[Vx],
) -> Vec<Curve> {
    let mut curves = Vec::new();
    let rev: Vec<usize> = chain.iter().rev().copied().collect();
    let first = rect(rev[0]);
    let mut at = Pt {
        x: first.x,
        y: first.cy() + 5.0,
    };
    for (k, &v) in rev.iter().enumerate().skip(1) {
        let r = rect(v);
        let last = k == rev.len() - 1;
        let entry = if last {
            Pt {
                x: r.right(),
                y: r.cy() + 5.0,
            }
        } else {
            Pt {
                x: col_x[vx[v].layer] + colw[vx[v].layer],
                y: r.cy(),
            }
        };
        // Only a direct back edge can lie on a forward one (a 2-cycle); long ones need no sag.
        let sag = if rev.len() == 2 { BACK_SAG } else { 0.0 };
        curves.push(s_curve(at, entry, sag));
        if !last {
            let exit = Pt {
                x: col_x[vx[v].layer],
                y: r.cy(),
            };
            curves.push(Curve::line(entry, exit));
            at = exit;
        }
    }
    curves
}

/// Horizontal tangents at both ends; `sag` pushes the middle down.
fn s_curve(from: Pt, to: Pt, sag: f64) -> Curve {
    let dx = (to.x - from.x) / 2.0;
    Curve {
        from,
        c1: Pt {
            x: from.x + dx,
            y: from.y + sag,
        },
        c2: Pt {
            x: to.x - dx,
            y: to.y + sag,
        },
        to,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inversions_count_crossings() {
        assert_eq!(inversions(&mut [0, 1, 2]), 0);
        assert_eq!(inversions(&mut [2, 1, 0]), 3);
        assert_eq!(inversions(&mut [1, 1, 0]), 2);
    }

    #[test]
    fn fit_keeps_order_and_spacing() {
        // Unconstrained: exactly where wanted.
        assert_eq!(fit(&[0.0, 100.0], &[10.0, 10.0], 0.0), [0.0, 100.0]);
        // Both want 50: they share the difference around it.
        let p = fit(&[50.0, 50.0], &[10.0, 10.0], 0.0);
        assert_eq!(p, [35.0, 65.0]);
        // Never above the top.
        assert_eq!(fit(&[-40.0, 0.0], &[10.0, 10.0], 5.0), [5.0, 35.0]);
    }

    #[test]
    fn monospace_widths() {
        assert_eq!(text_width("abc", 2.0), 6.0);
        assert_eq!(text_width("日本", 2.0), 8.0);
    }
}
