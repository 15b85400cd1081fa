/* Training text for the synthetic vocabularies (tok_synth.c): English prose, dialogue and code, with
 * some non-ASCII text, written for this project. Changing it changes every synthetic vocabulary. */
#include <stddef.h>

#include "model/tok_internal.h"

const char *const tok_synth_text[] = {
    "The river town woke slowly. Bakers opened their shutters before the sun cleared the hills, and the "
    "smell of bread drifted down to the water, where the first ferry of the day was already taking on "
    "passengers. Nobody was in a hurry; the ferry would leave when it was full, as it always had.",

    "A speculative decoder guesses several tokens ahead with a small, fast model and then asks the large "
    "model to check all of the guesses in one pass. When the guesses are right, the large model accepts "
    "them together and the text appears faster; when they are wrong, nothing is lost but a little work.",

    "\"Did you see the weather report?\" she asked.\n\"I didn't. Is it going to rain again?\"\n\"They're "
    "saying it'll clear up by noon, but I'm not sure I believe them. We've heard that before.\"\n\"Then "
    "we'd better take the umbrellas,\" he said, and they both laughed.",

    "int sum_array(const int *values, size_t count)\n{\n    int total = 0;\n    for (size_t i = 0; i < "
    "count; i++) {\n        total += values[i];\n    }\n    return total;\n}\n",

    "def read_config(path):\n    \"\"\"Return the settings stored in a simple key=value file.\"\"\"\n    "
    "settings = {}\n    with open(path) as f:\n        for line in f:\n            line = line.strip()\n"
    "            if not line or line.startswith('#'):\n                continue\n            key, value = "
    "line.split('=', 1)\n            settings[key.strip()] = value.strip()\n    return settings\n",

    "In 1969, two astronauts walked on the Moon while a third waited in orbit. The mission lasted eight "
    "days, three hours and eighteen minutes. Around 600 million people watched the landing on "
    "television, which was, at the time, the largest audience in history.",

    "Good software is written twice: once to learn what the problem really is, and once to solve it. The "
    "first version teaches you where the difficult parts are hidden; the second version puts them where "
    "everyone can see them, names them clearly, and tests them.",

    "The recipe is simple. Mix 250 g of flour with 5 g of salt and 7 g of dried yeast. Add 175 ml of warm "
    "water and 2 tablespoons of olive oil, then knead the dough for ten minutes until it is smooth. Let "
    "it rise for an hour, shape it, and bake it at 220 degrees for 25 minutes.",

    "struct node {\n    struct node *next;\n    char name[32];\n    long value;\n};\n\nstatic struct node "
    "*find(struct node *head, const char *name)\n{\n    while (head && strcmp(head->name, name) != 0)\n"
    "        head = head->next;\n    return head;\n}\n",

    "Caf\xC3\xA9 owners in Z\xC3\xBCrich and S\xC3\xA3o Paulo say the same thing: a na\xC3\xAFve customer "
    "orders the cheapest coffee, an experienced one orders the freshest. Prices range from 3 \xE2\x82\xAC "
    "to 6 \xE2\x82\xAC \xE2\x80\x94 sometimes more\xE2\x80\xA6",

    "The library is open from Monday to Friday, 9:00 to 17:30, and on Saturday mornings. Members may "
    "borrow up to six books at a time for three weeks. Overdue books cost 20 cents a day, and lost books "
    "must be replaced or paid for.",

    "for name, score in sorted(results.items(), key=lambda kv: kv[1], reverse=True):\n    print(f\"{name:"
    "<20} {score:6.2f}\")\n",

    "Learning a language takes patience. At first every sentence is a puzzle, and you translate each word "
    "in your head. Later the words start to arrive on their own, and one day you notice that you have "
    "been thinking in the new language without trying.",

    "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E\xE3\x81\xAE\xE6\x96\x87\xE7\xAB\xA0\xE3\x81\xA8 "
    "\xCE\xB5\xCE\xBB\xCE\xBB\xCE\xB7\xCE\xBD\xCE\xB9\xCE\xBA\xCE\xAC \xCE\xBA\xCE\xB5\xCE\xAF\xCE\xBC"
    "\xCE\xB5\xCE\xBD\xCE\xB1 and \xD1\x80\xD1\x83\xD1\x81\xD1\x81\xD0\xBA\xD0\xB8\xD0\xB9 "
    "\xD1\x82\xD0\xB5\xD0\xBA\xD1\x81\xD1\x82 appear here so that the vocabulary has seen a few "
    "scripts besides Latin. \xF0\x9F\x99\x82",

    "The committee met on Tuesday to review the budget. After a long discussion about roads, schools and "
    "the new swimming pool, members agreed to spend less on consultants and more on repairs. The vote "
    "was seven to two, with one member absent.",

    "if (n < 0 || n > MAX_ITEMS) {\n    fprintf(stderr, \"bad item count: %d\\n\", n);\n    return -1;\n}\n"
    "items = calloc((size_t)n, sizeof(*items));\nif (!items)\n    return -ENOMEM;\n",

    "Every evening the lighthouse keeper climbed the one hundred and twelve steps to the lamp room, "
    "cleaned the glass, trimmed the wick and wrote a line in the log book: the time, the wind, the state "
    "of the sea. He had done it for thirty years and never missed a night.",

    "Questions to ask before starting a project: Who will use it? What problem does it solve for them? "
    "How will we know it works? What is the smallest version that would still be useful? What can we "
    "leave out, and what must never break?",

    "class Counter:\n    def __init__(self):\n        self.counts = {}\n\n    def add(self, word):\n        "
    "self.counts[word] = self.counts.get(word, 0) + 1\n\n    def most_common(self, k=10):\n        return "
    "sorted(self.counts.items(), key=lambda p: -p[1])[:k]\n",

    "The train was late, so they waited on the platform and watched the pigeons. A boy with a red "
    "balloon ran past, followed by his father carrying two suitcases and a guitar. When the train "
    "finally arrived, it was almost empty, and they had a whole carriage to themselves.",

    "Numbers worth remembering: the speed of light is about 299,792 kilometres per second; water boils "
    "at 100 degrees Celsius at sea level; a year has 365 days, or 366 in a leap year; and 2 + 2 = 4, "
    "whatever anyone tells you.",

    "It's easy to write code that works today. It's harder to write code that someone else can change "
    "next year without fear. Tests help, clear names help, and small functions help most of all, "
    "because they can be understood one at a time.",

    "while read -r line; do\n    case \"$line\" in\n        \\#*) continue ;;\n        *=*) export "
    "\"$line\" ;;\n    esac\ndone < settings.conf\n",

    "The garden was full of bees in June. Lavender along the path, roses by the wall, and tomatoes "
    "ripening in the greenhouse at the back. In the evenings the neighbours came over with cheese and "
    "wine, and they sat outside until it was too dark to see each other's faces.",

    "{\"id\": 42, \"name\": \"example\", \"tags\": [\"alpha\", \"beta\"], \"active\": true, \"score\": "
    "0.875, \"owner\": {\"email\": \"someone@example.org\", \"since\": \"2021-03-14\"}}",

    "When the storm finally passed, the village counted the damage: three roofs, a fallen oak across the "
    "school road, and the bridge closed until the engineers could inspect it. Nobody was hurt, and by "
    "the weekend most of the mess had been cleared away by volunteers.",
};

const size_t tok_synth_text_count = sizeof(tok_synth_text) / sizeof(tok_synth_text[0]);
