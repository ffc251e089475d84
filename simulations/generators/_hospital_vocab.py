"""Vocabulary for triage messages: department-specific slot fillers and shared templates."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DepartmentVocab:
    """Slot fillers that point to one department.

    ``complaints`` and ``contexts`` are in lay language and person-neutral, so they fit both
    "I've had ..." and "My dad has had ...". ``findings``, ``history`` and ``asks`` are
    clinician shorthand.
    """

    complaints: tuple[str, ...]
    contexts: tuple[str, ...]
    findings: tuple[str, ...]
    history: tuple[str, ...]
    asks: tuple[str, ...]


VOCAB: dict[str, DepartmentVocab] = {
    "cardiology": DepartmentVocab(
        complaints=(
            "chest tightness",
            "a fluttering feeling in the chest",
            "a racing heartbeat out of nowhere",
            "pressure in the middle of the chest",
            "swollen ankles by the evening",
            "a pounding heartbeat",
            "skipped heartbeats",
            "chest pain that spreads to the left arm",
        ),
        contexts=(
            "when climbing stairs",
            "after walking uphill",
            "when lying flat at night",
            "during exercise",
            "even at rest",
            "after a strong coffee",
            "when hurrying for the bus",
        ),
        findings=(
            "exertional chest pain",
            "intermittent palpitations",
            "irregularly irregular pulse",
            "bilateral ankle edema",
            "new systolic murmur",
            "presyncope on exertion",
            "BP 172/104 on repeat",
            "orthopnea",
        ),
        history=(
            "hx HTN",
            "hx hyperlipidemia",
            "prior MI",
            "FHx early CAD",
            "known AF",
            "on statin",
        ),
        asks=(
            "ECG done, refer?",
            "?echo",
            "Needs cardiology input?",
            "Troponin pending. Refer?",
            "?Holter monitor",
            "Cardiology opinion please.",
        ),
    ),
    "dermatology": DepartmentVocab(
        complaints=(
            "an itchy red rash",
            "a mole that has changed colour",
            "dry, flaky patches of skin",
            "painful acne cysts",
            "a spot that keeps bleeding",
            "hives that come and go",
            "thick scaly plaques",
            "hair falling out in patches",
        ),
        contexts=(
            "on the forearms",
            "across the back",
            "on the scalp",
            "on the face and neck",
            "behind the knees",
            "since switching to a new soap",
            "that gets worse in winter",
        ),
        findings=(
            "pruritic erythematous rash",
            "asymmetric pigmented lesion, 8mm",
            "scaly plaques on extensor surfaces",
            "nodulocystic acne",
            "non-healing ulcerated papule",
            "patchy alopecia",
            "urticarial wheals",
            "vesicular hand eczema",
        ),
        history=(
            "hx atopic eczema",
            "fair skin, many sunburns",
            "FHx melanoma",
            "hx psoriasis",
            "outdoor worker",
        ),
        asks=(
            "?biopsy",
            "Derm referral?",
            "Dermoscopy please.",
            "Photos attached. Refer?",
            "?2-week wait skin pathway",
        ),
    ),
    "gastroenterology": DepartmentVocab(
        complaints=(
            "burning in the upper stomach",
            "bloating and cramps",
            "bad heartburn",
            "loose stools",
            "constipation",
            "blood in the stool",
            "constant nausea",
            "trouble swallowing food",
        ),
        contexts=(
            "after eating",
            "after fatty meals",
            "first thing in the morning",
            "when lying down after dinner",
            "after anything with dairy",
            "on and off between meals",
        ),
        findings=(
            "epigastric pain",
            "post-prandial bloating",
            "change in bowel habit",
            "PR bleeding",
            "dysphagia to solids",
            "RUQ pain after fatty meals",
            "reflux despite PPI",
            "iron-deficiency anaemia",
        ),
        history=(
            "hx IBS",
            "FHx colon ca",
            "regular NSAID use",
            "hx GERD",
            "heavy EtOH",
            "hx gallstones",
        ),
        asks=(
            "?scope",
            "Refer for OGD?",
            "Stool studies sent. GI?",
            "?colonoscopy",
            "GI opinion please.",
        ),
    ),
    "neurology": DepartmentVocab(
        complaints=(
            "pounding headaches",
            "numbness in the fingers",
            "tingling down one side",
            "dizzy spells",
            "a shaky hand",
            "blurred vision before headaches",
            "memory lapses",
            "a weak grip",
        ),
        contexts=(
            "behind one eye",
            "that disrupt sleep",
            "when turning the head",
            "with flashing lights beforehand",
            "on one side only",
            "that seem to be getting worse",
        ),
        findings=(
            "recurrent unilateral headache with aura",
            "paresthesia L hand",
            "episodic vertigo",
            "resting tremor R hand",
            "new-onset seizure",
            "transient word-finding difficulty",
            "progressive memory decline",
            "foot drop",
        ),
        history=(
            "hx migraine",
            "hx TIA",
            "FHx Parkinson's",
            "hx head injury",
            "hx epilepsy",
        ),
        asks=(
            "?MRI brain",
            "Neuro referral?",
            "?EEG",
            "Neuro review please.",
            "?first fit clinic",
        ),
    ),
    "orthopedics": DepartmentVocab(
        complaints=(
            "knee pain",
            "a stiff shoulder",
            "lower back pain",
            "a swollen ankle",
            "a sore hip",
            "wrist pain",
            "pain in the heel",
            "a clicking, locking knee",
        ),
        contexts=(
            "after a fall",
            "since twisting it playing football",
            "when putting weight on it",
            "going down stairs",
            "after lifting heavy boxes",
            "when raising the arm",
            "after a long run",
        ),
        findings=(
            "knee effusion after twisting injury",
            "reduced shoulder ROM",
            "mechanical low back pain",
            "ankle swelling, unable to weight-bear",
            "pain on hip internal rotation",
            "snuffbox tenderness after FOOSH",
            "plantar heel pain",
            "locking of the knee",
        ),
        history=(
            "hx OA",
            "hx osteoporosis",
            "keen runner",
            "manual labourer",
            "prior ACL repair",
        ),
        asks=(
            "X-ray done. Ortho?",
            "?fracture clinic",
            "Ortho referral?",
            "?MRI knee",
            "Orthopaedic opinion please.",
        ),
    ),
    "pulmonology": DepartmentVocab(
        complaints=(
            "a cough that won't go away",
            "wheezing",
            "shortness of breath",
            "coughing up green phlegm",
            "a tight chest and wheeze",
            "loud snoring and gasping",
            "coughing up a little blood",
            "getting breathless easily",
        ),
        contexts=(
            "at night",
            "in cold air",
            "ever since a chest infection",
            "when walking the dog",
            "around dust or smoke",
            "after a few flights of stairs",
        ),
        findings=(
            "chronic productive cough",
            "expiratory wheeze",
            "exertional dyspnoea",
            "SpO2 91% on air",
            "haemoptysis",
            "nocturnal cough",
            "witnessed apnoeas",
            "reduced breath sounds R base",
        ),
        history=(
            "hx asthma",
            "ex-smoker 40 pk-yr",
            "hx COPD",
            "asbestos exposure",
            "current smoker",
        ),
        asks=(
            "?spirometry",
            "CXR pending. Resp referral?",
            "?sleep study",
            "Pulm review please.",
            "?CT chest",
        ),
    ),
    "psychiatry": DepartmentVocab(
        complaints=(
            "low mood",
            "constant worry",
            "panic attacks",
            "racing thoughts and no sleep",
            "no interest in anything",
            "feeling on edge all the time",
            "intrusive thoughts",
            "crying spells",
        ),
        contexts=(
            "most days",
            "since losing a job",
            "especially at work",
            "late at night",
            "since the baby was born",
            "after a bereavement",
        ),
        findings=(
            "low mood, anhedonia",
            "generalised anxiety",
            "recurrent panic attacks",
            "insomnia, early waking",
            "intrusive thoughts",
            "poor appetite and concentration",
            "elevated mood, reduced need for sleep",
            "social withdrawal",
        ),
        history=(
            "hx depression",
            "prior SSRI trial",
            "FHx bipolar",
            "recent bereavement",
            "hx self-harm",
        ),
        asks=(
            "PHQ-9 18. Refer?",
            "Psych assessment?",
            "Safety screen neg. Refer?",
            "?CMHT referral",
            "Psychiatry opinion please.",
        ),
    ),
    "endocrinology": DepartmentVocab(
        complaints=(
            "constant thirst",
            "weight gain",
            "feeling cold all the time",
            "unexplained weight loss",
            "a lump in the neck",
            "peeing a lot at night",
            "sweats and shakiness",
            "hair thinning and dry skin",
        ),
        contexts=(
            "despite eating normally",
            "for no clear reason",
            "along with tiredness",
            "despite drinking lots of water",
            "over the last few months",
            "along with a fast pulse",
        ),
        findings=(
            "polyuria, polydipsia",
            "HbA1c 71",
            "raised TSH",
            "goitre on exam",
            "weight loss, heat intolerance",
            "fatigue, cold intolerance",
            "hyponatraemia, dizziness",
            "recurrent hypos",
        ),
        history=(
            "hx T2DM",
            "FHx thyroid disease",
            "long-term steroids",
            "BMI 34",
            "hx gestational diabetes",
        ),
        asks=(
            "Endo referral?",
            "?thyroid US",
            "Repeat TFTs. Refer?",
            "?diabetes clinic",
            "Endocrine opinion please.",
        ),
    ),
}

GENERIC_COMPLAINTS = (
    "tiredness",
    "poor sleep",
    "feeling run down",
    "a bit of a headache",
    "no appetite",
)
OPENERS = (
    "Hi,",
    "Hello,",
    "Not sure who to ask, but",
    "Sorry to bother you,",
    "Good morning,",
    "",
)
CLOSINGS = (
    "Should I see someone?",
    "Is this serious?",
    "I'm getting worried.",
    "Can I get an appointment?",
    "It's affecting my sleep.",
    "Any advice?",
    "Who should I see?",
    "It's not getting better.",
)
DURATIONS = (
    "three days",
    "a week",
    "two weeks",
    "about a month",
    "six weeks",
    "a few months",
    "nearly a year",
)
SHORT_DURATIONS = ("3d", "5d", "1 wk", "2 wks", "6 wks", "1 mo", "3 mo", "6 mo")
# Relation -> plausible age range, so "my son (81)" never happens.
RELATIONS = {
    "mum": (40, 88),
    "dad": (40, 88),
    "husband": (24, 85),
    "wife": (24, 85),
    "partner": (22, 80),
    "son": (3, 35),
    "daughter": (3, 35),
    "grandmother": (65, 96),
}
SEXES = (("M", "man"), ("F", "woman"))
NOTE_EXTRAS = (
    "Obs stable.",
    "No red flags.",
    "Seen twice this month.",
    "Pt anxious.",
    "Bloods sent.",
    "Afebrile.",
    "Keen for review.",
)

PATIENT_TEMPLATES = (
    "I've had {complaint} for {duration}, {context}. {closing}",
    "{opener} I keep getting {complaint} {context}. It started {duration} ago. {closing}",
    "My {relation} ({age}) has had {complaint} for {duration}, mostly {context}. {closing}",
    "For {duration} now I've noticed {complaint}, mostly {context}. {closing}",
    "{opener} is it normal to have {complaint} {context}? It's been {duration}. {closing}",
    "{opener} {duration} of {complaint} {context}, and now {complaint2} too. {closing}",
    "Booking for my {relation}, {age}: {complaint} {context} for {duration}. {closing}",
)
NOTE_TEMPLATES = (
    "{age}{sex}, {finding} x{short}, {history}. {ask}",
    "{age}yo {sex_word} with {finding} for {short}. {history}. {ask}",
    "Pt {age}{sex}: {finding}, onset {short} ago; {history}. {ask}",
    "Triage note - {age}{sex}, {finding} + {finding2} x{short}. {history}. {ask}",
    "GP referral: {age}{sex}, {finding}, {history}. Failed conservative mgmt. {ask}",
)
