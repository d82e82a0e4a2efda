//! The caption of a scene: what is drawn, where and when, in varied phrasing.

use rand::Rng;
use rand_xoshiro::SplitMix64;

use crate::scene::{pick, Ground, Scene, Shape, Time, COLOURS};

impl Scene {
    /// The caption: the objects (named left to right), the ground and the time of day or the
    /// sky, in one of several templates.
    pub(crate) fn describe(&self, rng: &mut SplitMix64) -> String {
        let (objects, plural) = self.name_objects(rng);
        let ground: &[&str] = match self.ground {
            Ground::Grass => &["on the grass", "on a grassy field", "in a meadow"],
            Ground::Sand => &["on the sand", "on a sandy beach", "on the beach"],
            Ground::Snow => &["on the snow", "on a snowy field", "in the snow"],
            Ground::Water => &["floating on the water", "on a lake", "floating on the sea"],
            Ground::Road => &["on the road", "on an empty road", "in the middle of a road"],
        };
        let time: &[&str] = match self.time {
            Time::Dawn => &["at dawn", "at sunrise", "in the early morning"],
            Time::Noon => &[
                "at noon",
                "on a sunny day",
                "under a blue sky",
                "in bright daylight",
            ],
            Time::Dusk => &["at dusk", "at sunset", "in the evening light"],
            Time::Night => &["at night", "under a night sky", "on a moonlit night"],
        };
        let (ground, time) = (pick(rng, ground), pick(rng, time));
        let sky = match self.time {
            Time::Dawn | Time::Dusk => "with the sun low in the sky",
            Time::Noon => "with the sun high in the sky",
            Time::Night => "with the moon in the sky",
        };
        let prefix = pick(
            rng,
            &[
                "a photo of ",
                "a photo of ",
                "a picture of ",
                "a photograph of ",
                "an outdoor photo of ",
                "",
            ],
        );
        // "there is a ball and two boxes", "there are two balls and a box".
        let template = rng.random_range(0..6);
        let mut caption = match template {
            0 | 1 => format!("{prefix}{objects} {ground} {time}"),
            2 => format!("{time}, {objects} {ground}"),
            3 => format!("{prefix}{objects} {ground} {sky}"),
            4 => {
                let be = if plural { "there are" } else { "there is" };
                format!("{be} {objects} {ground} {time}")
            }
            _ => format!("{objects} {ground} {time}"),
        };
        if self.hills > 0.0 && template != 3 && rng.random::<f64>() < 0.6 {
            caption += pick(
                rng,
                &[
                    ", with hills in the distance",
                    ", hills on the horizon",
                    " with hills behind",
                ],
            );
        }
        caption
    }

    /// The objects as a phrase ("a red ball next to two blue boxes"), identical ones grouped,
    /// and whether the first group is plural.
    fn name_objects(&self, rng: &mut SplitMix64) -> (String, bool) {
        // Group identical (shape, colour) objects, in the order they are first named.
        let mut groups: Vec<(Shape, usize, usize)> = Vec::new();
        for o in &self.objects {
            match groups
                .iter_mut()
                .find(|g| g.0 == o.shape && g.1 == o.colour)
            {
                Some(g) => g.2 += 1,
                None => groups.push((o.shape, o.colour, 1)),
            }
        }
        let phrases: Vec<String> = groups
            .iter()
            .map(|&(shape, colour, count)| {
                let colour = COLOURS[colour].0;
                let (one, many) = match shape {
                    Shape::Ball => pick(rng, &[("ball", "balls"), ("sphere", "spheres")]),
                    Shape::Box => pick(rng, &[("box", "boxes"), ("cube", "cubes")]),
                    Shape::Tent => ("tent", "tents"),
                    Shape::Flag => ("flag", "flags"),
                    Shape::Ring => ("ring", "rings"),
                };
                match count {
                    1 => format!("{} {colour} {one}", article(colour)),
                    2 => format!("two {colour} {many}"),
                    _ => format!("three {colour} {many}"),
                }
            })
            .collect();
        let objects = match phrases.as_slice() {
            [a] => a.clone(),
            [a, b] => {
                let join = pick(rng, &[" and ", " next to ", " beside ", " near "]);
                format!("{a}{join}{b}")
            }
            [a, b, c] => format!("{a}, {b} and {c}"),
            _ => unreachable!("one to three objects"),
        };
        (objects, groups[0].2 > 1)
    }
}

/// "a" or "an" before `word`.
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}
