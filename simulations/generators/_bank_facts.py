"""Fixed support-desk answers of a fictional bank, behind the support QA generator."""

from __future__ import annotations

from fedlora.simulations.generators._qa import Fact

FACTS = (
    Fact(
        "card_lost",
        (
            "How do I block a lost card?",
            "What should I do if I lose my card?",
            "How can I freeze my card after losing it?",
        ),
        "Freeze the card straight away in the app under Cards, then order a replacement there.",
    ),
    Fact(
        "card_lost",
        ("How long does a replacement card take?", "When will my new card arrive?"),
        "Replacement cards arrive in 3-5 business days; you can add it to your phone wallet now.",
    ),
    Fact(
        "transfer_failed",
        ("Why did my transfer fail?", "What makes a bank transfer fail?"),
        "Usual causes are wrong account details, daily limits or a security check; the app shows"
        " which.",
    ),
    Fact(
        "transfer_failed",
        (
            "Will I get money back from a failed transfer?",
            "Where does the money go if a transfer fails?",
        ),
        "Failed transfers are returned to your account automatically, usually within 1-2 days.",
    ),
    Fact(
        "loan_question",
        ("What documents do I need for a loan?", "What do I need to apply for a personal loan?"),
        "You'll need ID, proof of address and recent payslips or tax returns; apply in the app.",
    ),
    Fact(
        "loan_question",
        ("Can I pay off my loan early?", "Is there a fee to repay a loan early?"),
        "Yes, you can repay early at any time; any early repayment charge is in your agreement.",
    ),
    Fact(
        "fraud_report",
        (
            "What do I do about a charge I don't recognise?",
            "How do I report fraud on my card?",
        ),
        "Freeze the card and report the payment under Help > Fraud; we'll investigate and reissue.",
    ),
    Fact(
        "fraud_report",
        (
            "Will I get my money back after fraud?",
            "Am I covered for fraudulent transactions?",
        ),
        "Confirmed unauthorised payments are refunded; we aim to settle claims in 10 working days.",
    ),
    Fact(
        "fraud_report",
        ("Do you ever ask for my PIN by text?", "Is a text asking for my PIN really from you?"),
        "We never ask for your PIN by text, email or phone. Please forward it to our fraud team.",
    ),
    Fact(
        "account_balance",
        ("How can I check my balance?", "Where do I see my account balance?"),
        "Your balance is on the app's home screen and in online banking, or at any of our ATMs.",
    ),
    Fact(
        "account_balance",
        (
            "Why is my available balance lower than my current balance?",
            "What's the difference between available and current balance?",
        ),
        "Available balance subtracts pending card payments and holds; current shows settled ones.",
    ),
    Fact(
        "change_address",
        ("How do I change my address?", "Where can I update my home address?"),
        "Update it in the app under Profile > Personal details; we may ask for proof of address.",
    ),
    Fact(
        "change_address",
        (
            "Will I get a new card if I change my address?",
            "Do I need a new card after moving house?",
        ),
        "No, your card keeps working after a move; statements and post go to the new address.",
    ),
    Fact(
        "mortgage_rate",
        (
            "Should I choose a fixed or variable mortgage rate?",
            "What's the difference between fixed and variable mortgages?",
        ),
        "A fixed rate keeps payments the same for the deal term; a variable rate can rise or fall.",
    ),
    Fact(
        "mortgage_rate",
        (
            "What happens when my fixed mortgage deal ends?",
            "My mortgage deal is ending, what should I do?",
        ),
        "You move to our standard variable rate unless you switch; pick a new deal 6 months ahead.",
    ),
    Fact(
        "mortgage_rate",
        ("What are your current mortgage rates?", "Where can I see today's mortgage rates?"),
        "Rates change often; see the mortgage page in the app or book an adviser for a quote.",
    ),
    Fact(
        "atm_problem",
        ("What do I do if an ATM keeps my card?", "The ATM swallowed my card, what now?"),
        "Freeze the card in the app and order a replacement; retained cards are destroyed safely.",
    ),
    Fact(
        "atm_problem",
        (
            "The ATM charged me but gave no cash, what now?",
            "What if an ATM debits me without giving cash?",
        ),
        "Report it in the app under Help > ATM; once the machine is balanced we refund you.",
    ),
    Fact(
        "card_declined",
        ("Why was my card declined?", "What can cause a card payment to be declined?"),
        "Declines come from low funds, limits, expired cards or fraud checks; the app says which.",
    ),
    Fact(
        "card_declined",
        ("Why does my card not work online?", "Why are my online purchases declined?"),
        "Check online payments are on under Card settings and approve the purchase in the app.",
    ),
    Fact(
        "close_account",
        ("How do I close my account?", "What's the process to close a bank account?"),
        "Move your money out, cancel direct debits, then pick Account > Close account in the app.",
    ),
    Fact(
        "close_account",
        ("Is there a fee to close an account?", "Does it cost anything to close my account?"),
        "There's no fee to close an account; fixed-term savings may lose interest if closed early.",
    ),
)

PREFIXES = ("", "Hi.", "Hello!", "Quick question.", "Hey there!", "Sorry to bother you.")
