//! Generated submissions modelled on real ones: a household survey sent by many enumerators
//! on many devices, with GPS inside and outside the project's geofence, and a share of bad
//! records of the kinds real clients send.

use std::fmt::Write as _;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// Form id of the generated survey.
pub const FORM_ID: &str = "household_survey";
/// Form version of the generated survey.
pub const FORM_VERSION: &str = "2024050101";

/// Returns the XForm of the generated survey.
pub fn xform() -> String {
    format!(
        r#"<?xml version="1.0"?>
<h:html xmlns="http://www.w3.org/2002/xforms" xmlns:h="http://www.w3.org/1999/xhtml" xmlns:jr="http://openrosa.org/javarosa" xmlns:orx="http://openrosa.org/xforms">
  <h:head>
    <h:title>Household survey</h:title>
    <model>
      <instance>
        <data id="{FORM_ID}" version="{FORM_VERSION}">
          <start/><end/><deviceid/>
          <consent/><hh_size/><water_source/><head_name/><location/>
          <member jr:template=""><member_name/><member_age/></member>
          <meta><instanceID/></meta>
        </data>
      </instance>
      <bind nodeset="/data/start" type="dateTime" jr:preload="timestamp" jr:preloadParams="start"/>
      <bind nodeset="/data/end" type="dateTime" jr:preload="timestamp" jr:preloadParams="end"/>
      <bind nodeset="/data/deviceid" type="string" jr:preload="property" jr:preloadParams="deviceid"/>
      <bind nodeset="/data/consent" type="select1" required="true()"/>
      <bind nodeset="/data/hh_size" type="int" required="true()"/>
      <bind nodeset="/data/water_source" type="select1"/>
      <bind nodeset="/data/head_name" type="string"/>
      <bind nodeset="/data/location" type="geopoint" required="true()"/>
      <bind nodeset="/data/member/member_name" type="string"/>
      <bind nodeset="/data/member/member_age" type="int"/>
      <bind nodeset="/data/meta/instanceID" type="string" readonly="true()" jr:preload="uid"/>
    </model>
  </h:head>
  <h:body>
    <select1 ref="/data/consent"><label>Consent</label>
      <item><label>Yes</label><value>yes</value></item>
      <item><label>No</label><value>no</value></item>
    </select1>
    <input ref="/data/hh_size"><label>Household size</label></input>
    <select1 ref="/data/water_source"><label>Main water source</label>
      <item><label>Piped</label><value>piped</value></item>
      <item><label>Well</label><value>well</value></item>
      <item><label>River</label><value>river</value></item>
      <item><label>Other</label><value>other</value></item>
    </select1>
    <input ref="/data/head_name"><label>Head of household</label></input>
    <input ref="/data/location"><label>Location</label></input>
    <repeat nodeset="/data/member">
      <input ref="/data/member/member_name"><label>Name</label></input>
      <input ref="/data/member/member_age"><label>Age</label></input>
    </repeat>
  </h:body>
</h:html>
"#
    )
}

/// A project the generator sends to, with a point inside its geofence and one outside.
#[derive(Debug, Clone)]
pub struct ProjectPlan {
    /// Index of the token (organisation) the project belongs to.
    pub token_index: usize,
    /// Project id.
    pub project_id: String,
    /// A `[lon, lat]` point inside the project's geofence.
    pub inside: [f64; 2],
    /// A `[lon, lat]` point outside it.
    pub outside: [f64; 2],
}

/// Kind of a generated submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// An ordinary submission.
    Good,
    /// XML that does not parse: the gateway must reject it.
    Malformed,
    /// No instanceID: the gateway must reject it.
    MissingInstanceId,
    /// A household size that is not a number: validation flags it.
    WrongType,
    /// GPS at 0,0: the GPS check flags it.
    NullIsland,
}

/// One generated submission. Its XML and JSON bodies are written on demand, so that a load
/// of one format spends nothing on the other.
#[derive(Debug, Clone)]
pub struct Generated {
    /// Index of the project plan it goes to.
    pub plan: usize,
    /// Enumerator user name.
    pub user: String,
    /// Its instanceID (also present when the XML omits it, for bookkeeping).
    pub instance_id: String,
    /// Kind of record.
    pub kind: Kind,
    answers: Answers,
}

/// The answers drawn for one submission.
#[derive(Debug, Clone)]
struct Answers {
    enumerator: usize,
    device: String,
    start: String,
    end: String,
    hh_size: String,
    water_source: &'static str,
    location: String,
    member_ages: Vec<u32>,
}

/// The Kobo/Ona JSON shape of a submission, written without building a `serde_json::Value`.
#[derive(Serialize)]
struct KoboSubmission<'a> {
    id: &'static str,
    submission: KoboAnswers<'a>,
}

#[derive(Serialize)]
struct KoboAnswers<'a> {
    start: &'a str,
    end: &'a str,
    deviceid: &'a str,
    consent: &'static str,
    hh_size: &'a str,
    water_source: &'static str,
    head_name: String,
    location: &'a str,
    meta: KoboMeta<'a>,
}

#[derive(Serialize)]
struct KoboMeta<'a> {
    #[serde(rename = "instanceID", skip_serializing_if = "Option::is_none")]
    instance_id: Option<&'a str>,
}

impl Generated {
    /// Returns the instance XML, as ODK Collect would send it.
    pub fn xml(&self) -> String {
        let answers = &self.answers;
        let mut members = String::new();
        for (index, age) in answers.member_ages.iter().enumerate() {
            let _ = write!(
                members,
                "<member><member_name>Member {index}</member_name><member_age>{age}</member_age></member>"
            );
        }
        let meta = if self.kind == Kind::MissingInstanceId {
            "<meta/>".to_owned()
        } else {
            format!("<meta><instanceID>{}</instanceID></meta>", self.instance_id)
        };
        let mut xml = format!(
            "<?xml version='1.0' ?><data id=\"{FORM_ID}\" version=\"{FORM_VERSION}\">\
             <start>{}</start><end>{}</end><deviceid>{}</deviceid>\
             <consent>yes</consent><hh_size>{}</hh_size><water_source>{}</water_source>\
             <head_name>Head {}</head_name><location>{}</location>{members}{meta}</data>",
            answers.start,
            answers.end,
            answers.device,
            answers.hh_size,
            answers.water_source,
            answers.enumerator,
            answers.location,
        );
        if self.kind == Kind::Malformed {
            xml.truncate(xml.len() / 2);
        }
        xml
    }

    /// Appends the Kobo/Ona JSON shape of the same answers to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let answers = &self.answers;
        let submission = KoboSubmission {
            id: FORM_ID,
            submission: KoboAnswers {
                start: &answers.start,
                end: &answers.end,
                deviceid: &answers.device,
                consent: "yes",
                hh_size: &answers.hh_size,
                water_source: answers.water_source,
                head_name: format!("Head {}", answers.enumerator),
                location: &answers.location,
                meta: KoboMeta {
                    instance_id: (self.kind != Kind::MissingInstanceId)
                        .then_some(self.instance_id.as_str()),
                },
            },
        };
        serde_json::to_writer(out, &submission).expect("writing JSON to memory cannot fail");
    }
}

/// Writes `{"submissions": [...]}` of the given submissions, the body of a JSON batch.
pub fn batch_json(submissions: &[Generated]) -> Vec<u8> {
    let mut out = Vec::with_capacity(submissions.len() * 512 + 32);
    out.extend_from_slice(b"{\"submissions\":[");
    for (index, submission) in submissions.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        submission.write_json(&mut out);
    }
    out.extend_from_slice(b"]}");
    out
}

/// Deterministic generator of submissions for a set of projects.
pub struct Generator {
    rng: StdRng,
    plans: Vec<ProjectPlan>,
    enumerators_per_project: usize,
    bad_share: f64,
}

impl Generator {
    /// Creates a generator; the same seed gives the same submissions.
    pub fn new(
        seed: u64,
        plans: Vec<ProjectPlan>,
        enumerators_per_project: usize,
        bad_share: f64,
    ) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            plans,
            enumerators_per_project: enumerators_per_project.max(1),
            bad_share,
        }
    }

    /// Generates the next submission, for a project chosen at random.
    pub fn next_submission(&mut self) -> Generated {
        let plan_index = self.rng.random_range(0..self.plans.len());
        self.next_for_plan(plan_index)
    }

    /// Generates the next submission for the given project plan, as the items of one batch
    /// must be: a batch goes to one project.
    pub fn next_for_plan(&mut self, plan_index: usize) -> Generated {
        let plan = &self.plans[plan_index];
        let enumerator = self.rng.random_range(0..self.enumerators_per_project);
        let user = format!("{}-enumerator-{enumerator}", plan.project_id);
        let device = format!("collect:{}-{enumerator}", plan.project_id);
        let (inside, outside) = (plan.inside, plan.outside);
        let instance_id = format!(
            "uuid:{}",
            uuid::Builder::from_random_bytes(self.rng.random()).into_uuid()
        );

        let kind = if self.rng.random_bool(self.bad_share.clamp(0.0, 1.0)) {
            match self.rng.random_range(0..4) {
                0 => Kind::Malformed,
                1 => Kind::MissingInstanceId,
                2 => Kind::WrongType,
                _ => Kind::NullIsland,
            }
        } else {
            Kind::Good
        };

        // Most interviews take 10 to 40 minutes; some are rushed in under two.
        let minutes = if self.rng.random_bool(0.1) {
            1
        } else {
            self.rng.random_range(10..40)
        };
        let end = Utc::now() - Duration::minutes(self.rng.random_range(0..600));
        let start = end - Duration::minutes(minutes);
        let [lon, lat] = match kind {
            Kind::NullIsland => [0.0, 0.0],
            _ if self.rng.random_bool(0.15) => outside,
            _ => inside,
        };
        let accuracy = if self.rng.random_bool(0.1) {
            120.0
        } else {
            self.rng.random_range(3.0..20.0)
        };
        let hh_size = if kind == Kind::WrongType {
            "several".to_owned()
        } else {
            self.rng.random_range(1..12).to_string()
        };
        let sources = ["piped", "well", "river", "other"];
        let water_source = sources[self.rng.random_range(0..sources.len())];
        let members = self.rng.random_range(1..4);
        let member_ages = (0..members).map(|_| self.rng.random_range(1..90)).collect();
        Generated {
            plan: plan_index,
            user,
            instance_id,
            kind,
            answers: Answers {
                enumerator,
                device,
                start: timestamp(start),
                end: timestamp(end),
                hh_size,
                water_source,
                location: format!("{lat:.6} {lon:.6} 1200.0 {accuracy:.1}"),
                member_ages,
            },
        }
    }
}

/// Formats a time as ODK Collect does, with milliseconds and a `+00:00` offset.
fn timestamp(time: DateTime<Utc>) -> String {
    // The RFC 3339 writer is several times cheaper than a strftime pattern, which a load of
    // tens of thousands of submissions a second notices.
    let mut text = time.to_rfc3339_opts(SecondsFormat::Millis, true);
    if text.ends_with('Z') {
        text.pop();
        text.push_str("+00:00");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plans() -> Vec<ProjectPlan> {
        vec![ProjectPlan {
            token_index: 0,
            project_id: "p1".into(),
            inside: [36.8, -1.3],
            outside: [10.0, 10.0],
        }]
    }

    #[test]
    fn same_seed_same_submissions() {
        let mut first = Generator::new(7, plans(), 3, 0.2);
        let mut second = Generator::new(7, plans(), 3, 0.2);
        for _ in 0..20 {
            let (a, b) = (first.next_submission(), second.next_submission());
            assert_eq!(a.instance_id, b.instance_id);
            assert_eq!(a.kind, b.kind);
        }
    }

    #[test]
    fn batch_items_share_their_project() {
        let mut several = plans();
        several.push(ProjectPlan {
            project_id: "p2".into(),
            ..several[0].clone()
        });
        let mut generator = Generator::new(5, several, 3, 0.0);
        for _ in 0..10 {
            assert_eq!(generator.next_for_plan(1).plan, 1);
        }
    }

    #[test]
    fn bodies_carry_the_same_answers() {
        let mut generator = Generator::new(3, plans(), 3, 0.0);
        let submission = generator.next_submission();
        let mut body = Vec::new();
        submission.write_json(&mut body);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["id"], FORM_ID);
        assert_eq!(
            json["submission"]["meta"]["instanceID"],
            submission.instance_id.as_str()
        );
        let start = json["submission"]["start"].as_str().unwrap();
        assert_eq!(start.len(), 29, "{start}");
        assert!(start.ends_with("+00:00"), "{start}");
        let xml = submission.xml();
        assert!(xml.contains(&format!("<start>{start}</start>")), "{xml}");
        assert!(xml.contains(&submission.instance_id));

        let batch: serde_json::Value =
            serde_json::from_slice(&batch_json(&[submission.clone(), submission])).unwrap();
        assert_eq!(batch["submissions"].as_array().unwrap().len(), 2);
        assert_eq!(batch["submissions"][1], json);
    }

    #[test]
    fn bad_share_zero_gives_only_good_records() {
        let mut generator = Generator::new(1, plans(), 3, 0.0);
        for _ in 0..50 {
            assert_eq!(generator.next_submission().kind, Kind::Good);
        }
    }
}
