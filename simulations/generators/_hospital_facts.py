"""Fixed, educational fact table behind the medical QA generator (no dosages, no numbers)."""

from __future__ import annotations

from dataclasses import dataclass

from fedlora.simulations.generators._qa import Fact


@dataclass(frozen=True)
class Condition:
    """General-audience facts about one condition."""

    name: str
    department: str
    first_line: str
    red_flags: str
    tests: str


SPECIALISTS = {
    "cardiology": "a cardiologist",
    "dermatology": "a dermatologist",
    "gastroenterology": "a gastroenterologist",
    "neurology": "a neurologist",
    "orthopedics": "an orthopedic specialist",
    "pulmonology": "a pulmonologist",
    "psychiatry": "a psychiatrist or mental health team",
    "endocrinology": "an endocrinologist",
}

CONDITIONS = (
    Condition(
        "high blood pressure",
        "cardiology",
        "Lifestyle changes come first: less salt, regular activity, less alcohol and home checks.",
        "chest pain, a sudden severe headache, confusion or vision changes",
        "repeated blood pressure readings, home monitoring, kidney blood tests and an ECG",
    ),
    Condition(
        "atrial fibrillation",
        "cardiology",
        "A doctor assesses stroke risk and discusses rate control and whether blood thinners help.",
        "chest pain, fainting, severe breathlessness or sudden weakness on one side",
        "an ECG, a Holter monitor, an echocardiogram and thyroid blood tests",
    ),
    Condition(
        "heart failure",
        "cardiology",
        "Care usually combines prescribed heart medicines, less salt and fluid, and daily weights.",
        "breathlessness at rest, chest pain, fainting or rapid weight gain over a few days",
        "an echocardiogram, a BNP blood test, an ECG and a chest X-ray",
    ),
    Condition(
        "eczema",
        "dermatology",
        "Thick moisturisers, soap substitutes and avoiding triggers; a doctor may add a steroid.",
        "weeping or crusted skin, fever, or painful clustered blisters",
        "a skin examination, plus patch tests or swabs if allergy or infection is suspected",
    ),
    Condition(
        "psoriasis",
        "dermatology",
        "Emollients and prescribed creams come first; light therapy is an option for wider areas.",
        "red, inflamed skin over most of the body, fever, or new painful swollen joints",
        "a skin examination, occasionally a biopsy, and a joint check for psoriatic arthritis",
    ),
    Condition(
        "acne",
        "dermatology",
        "Gentle cleansing plus over-the-counter or prescribed skin treatments; don't pick spots.",
        "deep painful cysts, scarring, or sudden severe acne with fever or joint pain",
        "a skin exam, plus hormone blood tests if periods are irregular",
    ),
    Condition(
        "acid reflux",
        "gastroenterology",
        "Smaller meals, no late eating, avoiding trigger foods and raising the head of the bed.",
        "difficulty swallowing, vomiting blood, black stools or unexplained weight loss",
        "a trial of treatment, then an endoscopy if symptoms persist",
    ),
    Condition(
        "irritable bowel syndrome",
        "gastroenterology",
        "Regular meals, adjusting fibre, a food and symptom diary, and managing stress.",
        "blood in the stool, unexplained weight loss or symptoms that wake you at night",
        "blood tests, coeliac screening and stool tests to rule out other causes",
    ),
    Condition(
        "gallstones",
        "gastroenterology",
        "Silent stones are often left alone; painful attacks are assessed for gallbladder removal.",
        "severe upper-right belly pain with fever, yellow skin or eyes, or dark urine",
        "an abdominal ultrasound and liver blood tests",
    ),
    Condition(
        "migraine",
        "neurology",
        "Spot triggers, rest in a dark quiet room, keep a headache diary and treat attacks early.",
        "a sudden worst-ever headache, weakness, confusion, or fever with a stiff neck",
        "a history and neurological exam, with brain imaging only if there are warning signs",
    ),
    Condition(
        "epilepsy",
        "neurology",
        "Anti-seizure medicine chosen by a specialist, regular sleep and avoiding known triggers.",
        "a long seizure, seizures one after another, or injury or breathing trouble after one",
        "an EEG, an MRI brain scan and blood tests",
    ),
    Condition(
        "Parkinson's disease",
        "neurology",
        "A specialist usually starts medicine for movement symptoms, plus exercise and physio.",
        "frequent falls, hallucinations, trouble swallowing or sudden confusion",
        "a neurological examination, with scans to rule out other causes",
    ),
    Condition(
        "knee osteoarthritis",
        "orthopedics",
        "Exercise, strengthening, weight management and simple pain relief; physiotherapy helps.",
        "a hot, very swollen knee, fever, or suddenly being unable to bear weight",
        "a clinical examination and knee X-rays",
    ),
    Condition(
        "ankle sprain",
        "orthopedics",
        "Rest, ice, compression and elevation at first, then gradual movement and balance work.",
        "being unable to walk, tenderness over the bone, numbness or a deformed-looking ankle",
        "an examination, and an X-ray if a fracture is possible",
    ),
    Condition(
        "rotator cuff injury",
        "orthopedics",
        "Relative rest, simple pain relief and physiotherapy exercises to strengthen the shoulder.",
        "sudden loss of arm movement after an injury, a deformity, or a hot joint with fever",
        "a shoulder examination, then an ultrasound or MRI if a tear is suspected",
    ),
    Condition(
        "asthma",
        "pulmonology",
        "A written asthma plan, a prescribed preventer inhaler, a reliever and avoiding triggers.",
        "a reliever that is not helping, being too breathless to speak, or blue lips",
        "spirometry with reversibility testing, peak flow diaries and sometimes FeNO",
    ),
    Condition(
        "COPD",
        "pulmonology",
        "Stopping smoking matters most, plus prescribed inhalers, vaccines and pulmonary rehab.",
        "severe breathlessness, confusion, chest pain or blue lips or fingertips",
        "spirometry, a chest X-ray, oxygen levels and blood tests",
    ),
    Condition(
        "sleep apnea",
        "pulmonology",
        "Weight management, no alcohol before bed and side sleeping; CPAP is often used.",
        "falling asleep while driving or pauses in breathing with choking at night",
        "a sleep study at home or in a sleep lab with an overnight oxygen recording",
    ),
    Condition(
        "depression",
        "psychiatry",
        "Talking therapies, activity, sleep routines and support; a doctor may discuss medication.",
        "thoughts of self-harm or suicide, not eating or drinking, or hearing voices",
        "a clinical assessment and mood questionnaires, with blood tests to rule out other causes",
    ),
    Condition(
        "generalized anxiety",
        "psychiatry",
        "Cognitive behavioural therapy, regular exercise, less caffeine and relaxation skills.",
        "thoughts of self-harm, chest pain, or anxiety so severe that daily life stops",
        "a clinical interview and anxiety questionnaires, sometimes thyroid blood tests",
    ),
    Condition(
        "panic disorder",
        "psychiatry",
        "Cognitive behavioural therapy and slow breathing techniques; medication may be discussed.",
        "chest pain that is new or different, fainting, or thoughts of self-harm",
        "a clinical assessment, with an ECG or blood tests to rule out heart or thyroid causes",
    ),
    Condition(
        "type 2 diabetes",
        "endocrinology",
        "Diet changes, regular activity and weight loss come first; medicine is added if needed.",
        "extreme thirst with vomiting, confusion, drowsiness or very high glucose readings",
        "an HbA1c or fasting glucose test, kidney function, cholesterol and eye checks",
    ),
    Condition(
        "hypothyroidism",
        "endocrinology",
        "Usually daily thyroid hormone replacement from a doctor, with regular blood tests.",
        "extreme drowsiness, confusion, a very slow heartbeat or feeling very cold",
        "TSH and free T4 blood tests, sometimes thyroid antibodies",
    ),
    Condition(
        "hyperthyroidism",
        "endocrinology",
        "Medicine to calm the thyroid and ease symptoms; radioiodine or surgery are later options.",
        "a racing or irregular heartbeat, high fever, confusion or severe agitation",
        "TSH, free T4 and T3 blood tests, antibodies and sometimes a thyroid scan",
    ),
)

FIRST_LINE_QUESTIONS = (
    "What is usually the first step for {name}?",
    "How is {name} usually managed at first?",
    "What can I do about {name}?",
    "What's the first-line approach to {name}?",
)
RED_FLAG_QUESTIONS = (
    "When should someone with {name} see a doctor promptly?",
    "What warning signs with {name} need medical attention?",
    "Which {name} symptoms are red flags?",
)
TEST_QUESTIONS = (
    "What tests are done for {name}?",
    "How do doctors check for {name}?",
    "Which tests are typical for {name}?",
)
SPECIALIST_QUESTIONS = (
    "Which specialist treats {name}?",
    "What kind of doctor handles {name}?",
    "Who should I see about {name}?",
)
PREFIXES = (
    "",
    "Hi!",
    "Quick question.",
    "Asking for my mum.",
    "Asking for a friend.",
    "I'm {age}.",
    "My GP mentioned it.",
)


def medical_facts() -> tuple[Fact, ...]:
    """Expand :data:`CONDITIONS` into one fact per (condition, kind of question)."""
    facts: list[Fact] = []
    for c in CONDITIONS:
        name = c.name
        subject = name[0].upper() + name[1:]
        answers = (
            (FIRST_LINE_QUESTIONS, c.first_line),
            (RED_FLAG_QUESTIONS, f"See a doctor promptly for {c.red_flags}."),
            (TEST_QUESTIONS, f"Typical tests include {c.tests}."),
            (
                SPECIALIST_QUESTIONS,
                f"{subject} is usually managed by {SPECIALISTS[c.department]}"
                " alongside primary care.",
            ),
        )
        for questions, answer in answers:
            phrased = tuple(q.format(name=name) for q in questions)
            facts.append(Fact(topic=c.department, questions=phrased, answer=answer))
    return tuple(facts)
