//! Checkpoints: a run interrupted, saved, loaded and continued matches the uninterrupted run
//! bit for bit; a file that does not fit is refused with a clear error and changes nothing.

mod common;

use bloop::rng::SplitMix64;
use bloop::{BloopState, Checkpoint, Config, EmaInit, EmaInits, EmaRole, Error, Layout, Leaf, Method, Order};
use common::{gpu, kernels, normal_leaves, Arrangement, Leaves};

fn layout() -> Layout {
    Layout::from_leaves([
        Leaf { name: "conv.weight".into(), len: 2 * 3 * 5 * 5, shape: Some(vec![2, 3, 5, 5]) },
        Leaf { name: "conv.bias".into(), len: 2, shape: None },
        Leaf { name: "fc.weight".into(), len: 4099, shape: None },
    ])
    .unwrap()
}

/// Runs `steps` steps of seeded gradients (one NaN step among them), returning every output's
/// bits; with `split`, saves after `split` steps, loads into a fresh state and goes on.
fn run(config: Config, steps: usize, split: Option<usize>, dir: &std::path::Path) -> (Vec<Vec<u32>>, BloopState) {
    let layout = layout();
    let lengths = layout.lengths();
    let mut rng = SplitMix64::new(21);
    let init = EmaInits::both(EmaInit::Normal { seed: 5 });
    let mut state = BloopState::new(&kernels(), &gpu().queue, &layout, config, init).unwrap();
    let leaves = Leaves::new(&mut rng, gpu(), &layout, Arrangement::Pool { in_place: false });
    let mut bindings = leaves.bind(&state);
    let mut outputs = Vec::new();
    for step in 0..steps {
        if Some(step) == split {
            let path = dir.join(format!("{:?}.safetensors", config.method));
            state.save_checkpoint(&path).unwrap();
            drop(state);
            let mut fresh = BloopState::new(&kernels(), &gpu().queue, &layout, config, EmaInits::zeros()).unwrap();
            fresh.load_checkpoint(&path).unwrap();
            state = fresh;
            bindings = leaves.bind(&state);
        }
        let mut g_main = normal_leaves(&mut rng, &lengths, 1.0);
        if step == 2 {
            g_main[2][7] = f32::NAN; // a skipped step, so the counter travels too
        }
        let g_aux = normal_leaves(&mut rng, &lengths, 1.0);
        common::run_step(&mut state, &leaves, &bindings, &g_main, &g_aux);
        let out = bloop::read_leaves(&gpu().device, &gpu().queue, leaves.output_leaves()).unwrap();
        outputs.push(out.iter().flatten().map(|x| x.to_bits()).collect());
    }
    (outputs, state)
}

#[test]
fn resuming_from_a_checkpoint_matches_the_uninterrupted_run_bit_for_bit() {
    let dir = std::env::temp_dir().join(format!("bloop-checkpoint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for config in [
        Config::new(Method::Bloop).ema(0.1).lambda(0.5),
        Config::new(Method::PcGrad).ema(0.2),
        Config::new(Method::Mixed),
        Config::new(Method::PcGrad).ema(0.3).order(Order::ProjectFirst),
    ] {
        let (whole, a) = run(config, 6, None, &dir);
        let (resumed, b) = run(config, 6, Some(4), &dir);
        assert_eq!(whole, resumed, "{config:?}");
        assert_eq!(a.checkpoint().unwrap(), b.checkpoint().unwrap(), "{config:?}");
        assert_eq!((b.steps(), b.skipped_steps().unwrap()), (6, 1));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn sample(method: Method) -> (BloopState, Vec<u8>) {
    let init = EmaInits::both(EmaInit::Normal { seed: 9 });
    let state = BloopState::new(&kernels(), &gpu().queue, &layout(), Config::new(method), init).unwrap();
    let bytes = state.checkpoint().unwrap().to_bytes().unwrap();
    (state, bytes)
}

#[test]
fn the_file_is_plain_safetensors_with_documented_names() {
    let (state, bytes) = sample(Method::PcGrad);
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = file.names();
    names.sort();
    assert_eq!(
        names,
        [
            "aux_ema/conv.bias",
            "aux_ema/conv.weight",
            "aux_ema/fc.weight",
            "main_ema/conv.bias",
            "main_ema/conv.weight",
            "main_ema/fc.weight"
        ]
    );
    let weight = file.tensor("main_ema/conv.weight").unwrap();
    assert_eq!((weight.dtype(), weight.shape()), (safetensors::Dtype::F32, &[2usize, 3, 5, 5][..]));
    let values: Vec<f32> = bytemuck::pod_collect_to_vec(weight.data());
    assert_eq!(values, state.read_ema(EmaRole::Main).unwrap()[0]);
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let metadata = header.metadata().as_ref().unwrap();
    assert_eq!(metadata["format"], "bloop-checkpoint");
    assert!(metadata["config"].contains("\"method\":\"pcgrad\""));
}

/// Asserts `restore` refuses `checkpoint` with a message containing `needle`, and that the
/// state did not change.
fn refuse(state: &mut BloopState, checkpoint: &Checkpoint, needle: &str) {
    let before = state.checkpoint().unwrap();
    match state.restore(checkpoint) {
        Err(Error::Checkpoint(message)) => assert!(message.contains(needle), "{message:?} lacks {needle:?}"),
        other => panic!("expected a checkpoint error about {needle}, got {other:?}"),
    }
    assert_eq!(state.checkpoint().unwrap(), before);
}

#[test]
fn checkpoints_that_do_not_fit_are_refused() {
    let (mut state, bytes) = sample(Method::Bloop);
    let good = Checkpoint::from_bytes(&bytes).unwrap();
    let mut other = good.clone();
    other.layout = Layout::from_lengths(&[150, 2, 4099]).unwrap();
    refuse(&mut state, &other, "leaf 0");
    let mut other = good.clone();
    other.layout = Layout::from_lengths(&[150, 2]).unwrap();
    refuse(&mut state, &other, "2 leaves");
    let mut other = good.clone();
    other.config = other.config.lambda(0.25);
    refuse(&mut state, &other, "lambda");
    let mut other = good.clone();
    other.config.method = Method::DynamicBarrier;
    refuse(&mut state, &other, "method");
    state.restore(&good).unwrap();
}

#[test]
fn damaged_files_are_refused_without_panicking() {
    let (_, bytes) = sample(Method::PcGrad);
    let parse = |b: &[u8]| Checkpoint::from_bytes(b);
    assert!(parse(&bytes).is_ok());
    for cut in [0, 1, 7, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        assert!(matches!(parse(&bytes[..cut]), Err(Error::Checkpoint(_))), "truncated at {cut}");
    }
    // Altered bytes in the header: each field in turn.
    let replace = |bytes: &[u8], from: &str, to: &str| -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let at = bytes
            .windows(from.len())
            .position(|w| w == from.as_bytes())
            .unwrap_or_else(|| panic!("{from} not in the header"));
        let mut altered = bytes.to_vec();
        altered[at..at + to.len()].copy_from_slice(to.as_bytes());
        altered
    };
    for (from, to) in [
        ("bloop-checkpoint", "bloop-checkpoinX"),
        ("\\\"method\\\":\\\"pcgrad", "\\\"method\\\":\\\"pcgrax"),
        ("\\\"ema\\\":", "\\\"emb\\\":"),
        ("\"version\":\"1\"", "\"version\":\"9\""),
        ("\"steps\":\"0\"", "\"steps\":\"x\""),
        ("\"dtype\":\"F32\"", "\"dtype\":\"F16\""),
    ] {
        let error = parse(&replace(&bytes, from, to)).unwrap_err();
        assert!(matches!(error, Error::Checkpoint(_)), "{from}: {error}");
    }
    // The tensors of another method: a bloop file that claims to be mixed has a tensor too many.
    let (_, bloop_bytes) = sample(Method::Bloop);
    let error =
        parse(&replace(&bloop_bytes, "\\\"method\\\":\\\"bloop\\\"", "\\\"method\\\":\\\"mixed\\\"")).unwrap_err();
    assert!(error.to_string().contains("tensors, expected 0"), "{error}");
}

#[test]
fn half_precision_averages_are_saved_in_their_type() {
    use bloop::{DType, ElementTypes};
    for dtype in [DType::F16, DType::Bf16] {
        let config = Config::new(Method::PcGrad).types(ElementTypes::all(dtype));
        let init = EmaInits::both(EmaInit::Normal { seed: 3 });
        let state = BloopState::new(&kernels(), &gpu().queue, &layout(), config, init).unwrap();
        let bytes = state.checkpoint().unwrap().to_bytes().unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let expected = if dtype == DType::F16 { safetensors::Dtype::F16 } else { safetensors::Dtype::BF16 };
        assert_eq!(file.tensor("aux_ema/fc.weight").unwrap().dtype(), expected);
        let mut restored = BloopState::new(&kernels(), &gpu().queue, &layout(), config, EmaInits::zeros()).unwrap();
        restored.load_checkpoint_bytes(&bytes).unwrap();
        for role in [EmaRole::Main, EmaRole::Aux] {
            let original = state.read_ema(role).unwrap();
            assert_eq!(restored.read_ema(role).unwrap(), original);
            // Stored values are the type's own: a round trip through it changes nothing.
            assert!(original.iter().flatten().all(|&x| dtype.round(x) == x));
        }
    }
}

#[test]
fn the_order_travels_and_older_files_read_as_update_first() {
    let init = EmaInits::both(EmaInit::Normal { seed: 9 });
    let config = Config::new(Method::Bloop).order(Order::ProjectFirst);
    let state = BloopState::new(&kernels(), &gpu().queue, &layout(), config, init).unwrap();
    let checkpoint = state.checkpoint().unwrap();
    let bytes = checkpoint.to_bytes().unwrap();
    let read = Checkpoint::from_bytes(&bytes).unwrap();
    assert_eq!(read.config.order, Order::ProjectFirst);
    assert_eq!(read, checkpoint);
    // A state in the other order refuses it, naming the field.
    let mut other =
        BloopState::new(&kernels(), &gpu().queue, &layout(), Config::new(Method::Bloop), EmaInits::zeros()).unwrap();
    let err = other.restore(&read).unwrap_err().to_string();
    assert!(err.contains("order"), "{err}");

    // A file written before the option existed (no `order` in its config) is update_first.
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata = header.metadata().clone().unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&metadata["config"]).unwrap();
    json.as_object_mut().unwrap().remove("order");
    metadata.insert("config".into(), json.to_string());
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, safetensors::tensor::TensorView)> =
        file.tensors().into_iter().map(|(n, t)| (n.to_string(), t)).collect();
    let old = safetensors::serialize(tensors, Some(metadata)).unwrap();
    let read = Checkpoint::from_bytes(&old).unwrap();
    assert_eq!(read.config.order, Order::UpdateFirst);
    assert_eq!(read.main_ema, checkpoint.main_ema);
}
