"""Vocabulary for bank support messages: per-intent templates, slot fillers and tones."""

from __future__ import annotations

TEMPLATES: dict[str, tuple[str, ...]] = {
    "card_lost": (
        "I lost my debit card {day} {place}. Can you block it?",
        "Can't find my card ending {last4} anywhere, I think I left it {place} {day}.",
        "My wallet was stolen {day} with my {account} account card inside. Please cancel it.",
        "I think I dropped my card {place}. How do I freeze it using {channel}?",
        "Need a replacement card, the old one ending {last4} is lost.",
        "Lost my credit card {day}. Has anyone used it since?",
    ),
    "transfer_failed": (
        "I sent {amount} to {recipient} {day} through {channel} but it says failed.",
        "My transfer of {amount} to {recipient} bounced back. Why?",
        "The payment of {amount} I sent to {recipient} {day} is still stuck on pending.",
        "Tried to transfer {amount} in {channel} and got an error, but the money left my account.",
        "{recipient_cap} never got the {amount} I sent {day}. The transfer shows as rejected.",
    ),
    "loan_question": (
        "What's the interest rate on a personal loan of {loan_amount}?",
        "Can I borrow {loan_amount} for {loan_purpose}? How long does approval take?",
        "I'd like to apply for a loan for {loan_purpose}. What documents do you need?",
        "Is it possible to repay my {loan_kind} of {loan_amount} early without a fee?",
        "How much could I borrow over {years} years for {loan_purpose}?",
        "Would a {loan_amount} loan affect my credit score?",
    ),
    "fraud_report": (
        "There's a charge of {amount} from {merchant} that I never made.",
        "I don't recognise {amount} paid to {merchant} {day}. I think my card was cloned.",
        "Got a text asking for my PIN, then saw {amount} spent at {merchant}. Is this fraud?",
        "Someone used my card ending {last4} at {merchant} for {amount}. It wasn't me.",
        "Several small payments to {merchant} appeared {day} on my {account} account. Not mine!",
    ),
    "account_balance": (
        "What's the balance on my {account} account? {channel_cap} isn't loading.",
        "How much is in my {account} account ending {last4} right now?",
        "My balance in {channel} looks about {amount} lower than it should be.",
        "Can you tell me the available balance on my {account} account ending {last4}?",
        "Why is my available balance different from my current balance {day}?",
    ),
    "change_address": (
        "I moved to {street}, {city}. How do I update my address?",
        "Please change my mailing address to {street}, {city}.",
        "I moved to {city} and need to update my address in {channel}, where is that option?",
        "We're moving to {city} next month. Can I change the address on my account now?",
        "My statements still go to my old flat. New address is {street}, {city}.",
    ),
    "mortgage_rate": (
        "What's your current fixed rate for a {years}-year mortgage?",
        "My fixed mortgage deal ends in {month}. What rates can I switch to?",
        "Are mortgage rates going down? Thinking about remortgaging a {home_amount} home.",
        "Is a variable rate better than fixed for a first-time buyer on a {home_amount} flat?",
        "What rate would I get on a {home_amount} mortgage with a {deposit}% deposit?",
    ),
    "atm_problem": (
        "The ATM {place} kept my card {day}.",
        "Withdrew {cash} at the ATM {place} but no cash came out, and I was still charged.",
        "The cash machine {place} said transaction declined but I have money.",
        "The ATM {place} swallowed my card {day}, what now?",
        "ATM {place} only gave me part of the {cash} I asked for.",
    ),
    "card_declined": (
        "My card got declined at {merchant} {day} even though I have funds.",
        "Why was my payment of {amount} at {merchant} declined?",
        "Card ending {last4} keeps getting declined for online purchases.",
        "Tried paying {amount} at {merchant} and it was refused twice.",
        "My {account} card doesn't work abroad, declined at {merchant} {day}.",
    ),
    "close_account": (
        "I'd like to close my {account} account ending {last4}.",
        "How do I close my account and move the balance to {other_bank}?",
        "Please shut down my {account} account ending {last4}, we don't use it anymore.",
        "What's the process to close my account in {channel} or at a branch?",
        "I'm leaving the country in {month}, so I want to close my {account} account.",
    ),
}

MERCHANTS = (
    "FreshMart",
    "Bluebird Coffee",
    "QuickFuel",
    "Northwind Electronics",
    "Pixel Streaming",
    "Corner Pharmacy",
    "Urban Outfit Co",
    "SkyHop Airlines",
    "GreenLeaf Grocers",
    "Metro Transit",
    "CloudBox Storage",
    "Sunny Side Diner",
    "BookNook",
    "ParkRight Parking",
    "Harbor Hotel",
    "ZoomRide",
    "PetPals",
    "HomeBase Hardware",
    "TechNova Online",
    "Vista Cinemas",
    "GameVault",
    "Olive & Thyme",
)
CHANNELS = ("the mobile app", "online banking", "the website", "phone banking", "the branch app")
ACCOUNTS = ("checking", "savings", "joint", "business", "student", "current")
RECIPIENTS = (
    "my landlord",
    "my sister",
    "a contractor",
    "my savings account",
    "a friend",
    "my daughter's school",
    "my accountant",
    "a car dealer",
)
DAYS = (
    "yesterday",
    "this morning",
    "two days ago",
    "last Friday",
    "on Monday",
    "last night",
    "over the weekend",
)
PLACES = (
    "at the mall",
    "on Main Street",
    "at the train station",
    "outside the supermarket",
    "at the airport",
    "near the university",
    "in the petrol station",
)
CITIES = ("Springfield", "Riverton", "Lakewood", "Fairview", "Maplewood", "Brookside", "Ashford")
STREETS = ("Elm Street", "Oak Avenue", "Harbour Road", "Mill Lane", "Station Road", "Park Crescent")
MONTHS = ("January", "March", "May", "June", "August", "October", "December")
LOAN_PURPOSES = (
    "a car",
    "a kitchen renovation",
    "a wedding",
    "consolidating debts",
    "solar panels",
    "university fees",
)
LOAN_KINDS = ("car loan", "personal loan", "home improvement loan")
OTHER_BANKS = ("another bank", "my partner's bank", "an online bank", "a credit union")

# Tone -> (openers, closers); the empty string means "none".
TONES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "polite": (
        ("Hi there,", "Hello,", "Good morning,", "Hi,"),
        ("Thanks in advance.", "Thank you!", "Appreciate your help.", "Many thanks."),
    ),
    "anxious": (
        ("Please help,", "I'm really worried -", "Urgent:", "Help!"),
        ("What do I do?", "Please get back to me ASAP.", "I'm panicking a bit.", ""),
    ),
    "angry": (
        ("This is ridiculous.", "Seriously?", "Third time writing about this.", ""),
        ("Fix this now.", "Very disappointed.", "I want this sorted today.", "Unacceptable."),
    ),
    "terse": (
        ("", "", "Hi."),
        ("", "Thx", "Cheers."),
    ),
}
