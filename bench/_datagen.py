"""The benchmark database: ``benchdb``, realistic shop data generated inside the server in SQL.

Customers, products, orders, order items and jsonb-heavy events (names, e-mails, addresses,
timestamps, numerics, Zipf-distributed English text), primary keys, secondary indexes and foreign
keys; about 35 s per GiB.  Used by bench/logical.py and bench/physical.py, with the server
settings both run it under.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import _common as cm
import psycopg
from _procs import MiB, log

from support.pgcluster import PgCluster

DB = "benchdb"

# Server settings for the benchmark cluster (on top of the test harness's fsync=off etc.).
SERVER_SETTINGS: dict[str, str | int | bool] = {
    "shared_buffers": "256MB",
    "maintenance_work_mem": "256MB",
    "work_mem": "32MB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "synchronous_commit": "off",
    "autovacuum": "off",  # no background ANALYZE of freshly restored tables skewing the next timing
    "jit": "off",
}


WORDS = """
the of and to a in is it you that he was for on are with as I his they be at one have this from or
had by hot word but what some we can out other were all there when up use your how said an each she
which do their time if will way about many then them write would like so these her long make thing
see him two has look more day could go come did number sound no most people my over know water than
call first who may down side been now find any new work part take get place made live where after
back little only round man year came show every good me give our under name very through just form
sentence great think say help low line differ turn cause much mean before move right boy old too same
tell does set three want air well also play small end put home read hand port large spell add even
land here must big high such follow act why ask men change went light kind off need house picture try
us again animal point mother world near build self earth father head stand own page should country
found answer school grow study still learn plant cover food sun four between state keep eye never last
let thought city tree cross farm hard start might story saw far sea draw left late run don't while
press close night real life few north open seem together next white children begin got walk example
ease paper group always music those both mark often letter until mile river car feet care second book
carry took science eat room friend began idea fish mountain stop once base hear horse cut sure watch
color face wood main enough plain girl usual young ready above ever red list though feel talk bird soon
body dog family direct pose leave song measure door product black short numeral class wind question
happen complete ship area half rock order fire south problem piece told knew pass since top whole king
space heard best hour better true during hundred five remember step early hold west ground interest
reach fast verb sing listen six table travel less morning ten simple several vowel toward war lay
against pattern slow center love person money serve appear road map rain rule govern pull cold notice
voice unit power town fine certain fly fall lead cry dark machine note wait plan figure star box noun
field rest correct able pound done beauty drive stood contain front teach week final gave green oh
quick develop ocean warm free minute strong special mind behind clear tail produce fact street inch
multiply nothing course stay wheel full force blue object decide surface deep moon island foot system
busy test record boat common gold possible plane stead dry wonder laugh thousand ago ran check game
shape equate miss brought heat snow tire bring yes distant fill east paint language among customer
delivery package refund shipping arrived damaged replacement invoice discount warranty quality
""".split()

FIRST = """James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara Richard
Susan Joseph Jessica Thomas Sarah Charles Karen Christopher Lisa Daniel Nancy Matthew Betty Anthony
Margaret Mark Sandra Donald Ashley Steven Kimberly Paul Emily Andrew Donna Joshua Michelle Kenneth Carol
Kevin Amanda Brian Dorothy George Melissa Timothy Deborah Ronald Stephanie Edward Rebecca Jason Sharon
Jeffrey Laura Ryan Cynthia Jacob Kathleen Gary Amy Nicholas Angela Eric Shirley Jonathan Anna Stephen
Brenda Larry Pamela Justin Emma Scott Nicole Brandon Helen Benjamin Samantha Samuel Katherine Sofia
Lukas Mia Noah Hannah Mateo Lucia Yuki Wei Priya Arjun Fatima Omar Olga Ivan Chloe Lea""".split()

LAST = """Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez
Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark Ramirez
Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill Flores Green Adams Nelson Baker
Hall Rivera Campbell Mitchell Carter Roberts Gomez Phillips Evans Turner Diaz Parker Cruz Edwards Collins
Reyes Stewart Morris Morales Murphy Cook Rogers Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed Kelly
Howard Ramos Kim Cox Ward Richardson Watson Brooks Chavez Wood James Bennett Gray Mendoza Ruiz Hughes
Price Alvarez Castillo Sanders Patel Myers Long Ross Foster Jimenez Muller Schmidt Schneider Fischer
Weber Meyer Wagner Becker Schulz Hoffmann Rossi Russo Ferrari Esposito Bianchi Dubois Moreau Laurent
Tanaka Suzuki Watanabe Chen Wang Zhang Liu Singh Kumar Sharma Ivanov Kowalski Nowak Jensen Hansen""".split()

CITIES = """Springfield Riverside Franklin Greenville Bristol Clinton Fairview Salem Madison Georgetown
Arlington Ashland Burlington Manchester Oxford Clayton Jackson Milton Auburn Dayton Lexington Milford
Winchester Hudson Kingston Dover Newport Marion Oakland Portland Chester Cleveland Lebanon Mount_Vernon
Hamilton Centerville Columbia Troy Lancaster Plymouth Berlin Hamburg Munich Cologne Vienna Zurich Lyon
Paris Madrid Barcelona Milan Rome Amsterdam Rotterdam Brussels Dublin London Leeds Glasgow Toronto
Vancouver Montreal Sydney Melbourne Auckland Osaka Tokyo Seoul Singapore Mumbai Austin Denver Seattle
Boston Chicago Houston Phoenix Atlanta Miami""".replace("_", " ").split()

STREETS = """Main Oak Pine Maple Cedar Elm Washington Lake Hill Park Walnut Sunset Lincoln Jackson Church
River Highland Forest Willow Mill Meadow Ridge Spring Chestnut Franklin Jefferson Adams Madison Cherry
Dogwood Valley Birch Hickory Lakeview Sycamore Poplar Railroad Front Center Broad Water College Prospect
Orchard Harbor Bridge Garden Station King Queen Victoria Albert Market High""".split()
STREET_KINDS = "St Street Ave Avenue Rd Road Blvd Lane Ln Dr Drive Way Ct Court Pl Terrace".split()
DOMAINS = """gmail.com gmail.com gmail.com gmail.com yahoo.com outlook.com hotmail.com icloud.com
proton.me gmx.de web.de aol.com mail.com example.org acme-corp.com globex.net initech.io""".split()
COUNTRIES = "US US US US US US GB GB DE DE FR CA CA AU NL ES IT SE JP IN BR MX PL IE CH AT NZ SG".split()
STATUSES = "delivered delivered delivered delivered shipped shipped processing pending cancelled refunded".split()
PAYMENTS = "card card card card paypal paypal apple_pay google_pay bank_transfer invoice gift_card".split()
CURRENCIES = "USD USD USD USD EUR EUR GBP CAD AUD JPY".split()
KINDS = """page_view page_view page_view page_view page_view product_view product_view search search
add_to_cart add_to_cart remove_from_cart checkout_started checkout_completed login logout signup
wishlist_add review_submitted support_ticket""".split()
CATEGORIES = """Electronics Books Home Kitchen Garden Toys Sports Outdoors Clothing Shoes Jewelry Beauty Health
Grocery Automotive Tools Office Pet_Supplies Music Movies Baby Furniture Lighting Crafts""".replace("_", " ").split()
ADJECTIVES = """Classic Premium Deluxe Compact Portable Wireless Organic Vintage Modern Ergonomic Smart Heavy-Duty
Lightweight Waterproof Handmade Eco-Friendly Professional Essential Ultra Mini Large Small Stainless
Bamboo Leather Cotton Wooden Ceramic Glass Digital Rechargeable""".split()
NOUNS = """Lamp Chair Desk Mug Kettle Blender Headphones Speaker Backpack Jacket Sneakers Watch Wallet Notebook
Pen Charger Cable Mouse Keyboard Monitor Tent Bottle Blanket Pillow Towel Shirt Dress Scarf Candle
Planter Shovel Drill Hammer Puzzle Doll Ball Racket Helmet Camera Tripod Router Brush Shampoo Serum""".split()
AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:124.0) Gecko/20100101 Firefox/124.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51",
    "Mozilla/5.0 (iPad; CPU OS 16_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
    "okhttp/4.12.0",
    "ShopApp/5.3.1 (iOS 17.4; iPhone15,2)",
]
REFERRERS = """direct direct direct https://www.google.com/ https://www.google.com/ https://www.bing.com/
https://duckduckgo.com/ https://www.facebook.com/ https://t.co/ https://www.instagram.com/
https://news.ycombinator.com/ https://www.reddit.com/ email newsletter""".split()
UTM = "google google facebook instagram newsletter tiktok affiliate bing".split()
CAMPAIGNS = "spring_sale summer_sale black_friday cyber_monday back_to_school holiday_gifts new_arrivals clearance".split()

PHRASES = 100_000  # pool of generated sentences; rows pick 1-3 at random (combinatorial variety)

SCHEMA_SQL = """
CREATE TABLE customers (
    id bigint PRIMARY KEY,
    first_name text NOT NULL,
    last_name text NOT NULL,
    email text NOT NULL,
    phone text,
    street text NOT NULL,
    city text NOT NULL,
    postal_code text NOT NULL,
    country char(2) NOT NULL,
    created_at timestamptz NOT NULL,
    birth_date date,
    loyalty_points integer NOT NULL DEFAULT 0,
    credit_limit numeric(12,2),
    marketing_opt_in boolean NOT NULL DEFAULT false,
    notes text
);
CREATE TABLE products (
    id integer PRIMARY KEY,
    sku text NOT NULL,
    name text NOT NULL,
    category text NOT NULL,
    description text NOT NULL,
    price numeric(10,2) NOT NULL,
    weight_grams integer,
    attributes jsonb NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL,
    order_no text NOT NULL,
    status text NOT NULL,
    ordered_at timestamptz NOT NULL,
    shipped_at timestamptz,
    currency char(3) NOT NULL,
    subtotal numeric(12,2) NOT NULL,
    tax numeric(12,2) NOT NULL,
    shipping numeric(8,2) NOT NULL,
    total numeric(12,2) NOT NULL,
    shipping_address text NOT NULL,
    payment_method text NOT NULL,
    coupon_code text,
    note text
);
CREATE TABLE order_items (
    order_id bigint NOT NULL,
    line_no smallint NOT NULL,
    product_id integer NOT NULL,
    quantity integer NOT NULL,
    unit_price numeric(10,2) NOT NULL,
    discount numeric(5,2) NOT NULL DEFAULT 0,
    PRIMARY KEY (order_id, line_no)
);
CREATE TABLE events (
    id bigint PRIMARY KEY,
    customer_id bigint,
    occurred_at timestamptz NOT NULL,
    kind text NOT NULL,
    session_id uuid NOT NULL,
    ip inet,
    user_agent text,
    url text NOT NULL,
    payload jsonb NOT NULL,
    message text
);
"""

INDEX_SQL = [
    "CREATE UNIQUE INDEX customers_email_key ON customers (email)",
    "CREATE INDEX customers_name_idx ON customers (last_name, first_name)",
    "CREATE UNIQUE INDEX products_sku_key ON products (sku)",
    "CREATE INDEX products_category_idx ON products (category)",
    "CREATE INDEX orders_customer_idx ON orders (customer_id)",
    "CREATE INDEX orders_ordered_at_idx ON orders (ordered_at)",
    "CREATE INDEX order_items_product_idx ON order_items (product_id)",
    "CREATE INDEX events_customer_time_idx ON events (customer_id, occurred_at)",
    "CREATE INDEX events_kind_time_idx ON events (kind, occurred_at)",
]
FK_SQL = [
    "ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id)",
    "ALTER TABLE order_items ADD CONSTRAINT order_items_order_fk FOREIGN KEY (order_id) REFERENCES orders (id)"
    " ON DELETE CASCADE",
    "ALTER TABLE order_items ADD CONSTRAINT order_items_product_fk FOREIGN KEY (product_id) REFERENCES products (id)",
    "ALTER TABLE events ADD CONSTRAINT events_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id)",
]


def _array(words: Sequence[str]) -> str:
    return "ARRAY[" + ",".join("'" + w.replace("'", "''") + "'" for w in words) + "]::text[]"


def _helper_sql() -> str:
    """Helper schema: constant lists as inlinable IMMUTABLE functions, a skewed picker, phrases."""
    lists = {
        "words": WORDS, "first_names": FIRST, "last_names": LAST, "cities": CITIES, "streets": STREETS,
        "street_kinds": STREET_KINDS, "domains": DOMAINS, "countries": COUNTRIES, "statuses": STATUSES,
        "payments": PAYMENTS, "currencies": CURRENCIES, "kinds": KINDS, "categories": CATEGORIES,
        "adjectives": ADJECTIVES, "nouns": NOUNS, "agents": AGENTS, "referrers": REFERRERS, "utm": UTM,
        "campaigns": CAMPAIGNS,
    }
    parts = ["CREATE SCHEMA bench_gen;"]
    for name, values in lists.items():
        parts.append(
            f"CREATE FUNCTION bench_gen.{name}() RETURNS text[] LANGUAGE sql IMMUTABLE AS $f$ SELECT {_array(values)} $f$;"
        )
    # skew > 1 favours the first elements (a Zipf-like head); 1 is uniform
    parts.append(
        "CREATE FUNCTION bench_gen.pick(arr text[], skew float8) RETURNS text LANGUAGE sql VOLATILE AS "
        "$f$ SELECT arr[1 + floor(power(random(), skew) * cardinality(arr))::int] $f$;"
    )
    parts.append("CREATE UNLOGGED TABLE bench_gen.phrases (id integer PRIMARY KEY, txt text NOT NULL);")
    parts.append(
        f"""INSERT INTO bench_gen.phrases
        SELECT s.i, (SELECT string_agg(bench_gen.pick(bench_gen.words(), 2.6), ' ') FROM generate_series(1, s.len))
        FROM (SELECT i, 2 + floor(power(random(), 1.6) * 22)::int AS len FROM generate_series(1, {PHRASES}) i) s;"""
    )
    parts.append("ANALYZE bench_gen.phrases;")
    return "\n".join(parts)


def _p() -> str:
    """A random phrase id expression."""
    return f"1 + floor(random() * {PHRASES})::int"


PRODUCTS_SQL = f"""
INSERT INTO products
SELECT g.id,
       upper(left(g.cat, 3)) || '-' || lpad(g.id::text, 6, '0') || '-' || upper(substr(md5(g.id::text), 1, 4)),
       g.adj || ' ' || g.noun || CASE WHEN random() < 0.4 THEN ' ' || (ARRAY['Pro','Plus','Max','Lite','2','3','XL','S'])[1 + floor(random()*8)::int] ELSE '' END,
       g.cat,
       upper(left(d1.txt, 1)) || substr(d1.txt, 2) || '. ' || upper(left(d2.txt, 1)) || substr(d2.txt, 2) || '. ' || d3.txt || '.',
       round((2 + power(random(), 2) * 500)::numeric, 2),
       CASE WHEN random() < 0.9 THEN 50 + floor(random() * 5000)::int END,
       jsonb_build_object(
           'color', bench_gen.pick(ARRAY['black','white','red','blue','green','grey','silver','navy','beige'], 1.5),
           'material', bench_gen.pick(ARRAY['plastic','steel','aluminium','cotton','wood','glass','leather','bamboo'], 1.3),
           'rating', round((1 + random() * 4)::numeric, 1),
           'reviews', floor(power(random(), 3) * 5000)::int,
           'dimensions_cm', jsonb_build_array(round((random()*80)::numeric, 1), round((random()*60)::numeric, 1), round((random()*40)::numeric, 1)),
           'tags', jsonb_build_array(bench_gen.pick(bench_gen.words(), 2.0), bench_gen.pick(bench_gen.words(), 2.0))),
       timestamptz '2019-01-01' + random() * interval '1800 days'
FROM (SELECT id, bench_gen.pick(bench_gen.categories(), 1.4) AS cat, bench_gen.pick(bench_gen.adjectives(), 1.2) AS adj,
             bench_gen.pick(bench_gen.nouns(), 1.2) AS noun, {_p()} AS p1, {_p()} AS p2, {_p()} AS p3
      FROM generate_series(1, %(n)s) id) g
JOIN bench_gen.phrases d1 ON d1.id = g.p1
JOIN bench_gen.phrases d2 ON d2.id = g.p2
JOIN bench_gen.phrases d3 ON d3.id = g.p3
"""

CUSTOMERS_SQL = f"""
INSERT INTO customers
SELECT g.id, g.fn, g.ln,
       lower(g.fn) || CASE WHEN g.r < 0.5 THEN '.' WHEN g.r < 0.7 THEN '_' ELSE '' END || lower(g.ln)
         || g.id::text || '@' || bench_gen.pick(bench_gen.domains(), 1.0),
       CASE WHEN random() < 0.8 THEN '+1 (' || (200 + floor(random()*800))::int || ') ' || (200 + floor(random()*800))::int
            || '-' || lpad(floor(random()*10000)::int::text, 4, '0') END,
       (1 + floor(power(random(), 2) * 9999))::int || ' ' || bench_gen.pick(bench_gen.streets(), 1.5) || ' '
         || bench_gen.pick(bench_gen.street_kinds(), 1.5) || CASE WHEN random() < 0.2 THEN ' Apt ' || (1 + floor(random()*400))::int ELSE '' END,
       bench_gen.pick(bench_gen.cities(), 1.6),
       lpad(floor(random() * 99999)::int::text, 5, '0'),
       bench_gen.pick(bench_gen.countries(), 1.0),
       date_trunc('second', timestamptz '2016-01-01' + random() * interval '3000 days'),
       CASE WHEN random() < 0.6 THEN date '1950-01-01' + floor(random() * 20000)::int END,
       floor(power(random(), 3) * 20000)::int,
       CASE WHEN random() < 0.5 THEN round((500 + random() * 9500)::numeric, -2) END,
       random() < 0.35,
       CASE WHEN g.r < 0.25 THEN upper(left(n.txt, 1)) || substr(n.txt, 2) || '.' END
FROM (SELECT id, random() AS r, bench_gen.pick(bench_gen.first_names(), 1.6) AS fn,
             bench_gen.pick(bench_gen.last_names(), 1.6) AS ln, {_p()} AS pn
      FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) id) g
JOIN bench_gen.phrases n ON n.id = g.pn
"""

ORDERS_SQL = f"""
INSERT INTO orders
SELECT g.id, g.cust,
       'ORD-' || to_char(g.ts, 'YYYY') || '-' || lpad(g.id::text, 9, '0'),
       g.status, g.ts,
       CASE WHEN g.status IN ('delivered', 'shipped', 'refunded')
            THEN date_trunc('second', g.ts + (6 + random() * 90) * interval '1 hour') END,
       bench_gen.pick(bench_gen.currencies(), 1.0),
       g.sub, round(g.sub * 0.08, 2), g.ship, g.sub + round(g.sub * 0.08, 2) + g.ship,
       (1 + floor(power(random(), 2) * 9999))::int || ' ' || bench_gen.pick(bench_gen.streets(), 1.5) || ' '
         || bench_gen.pick(bench_gen.street_kinds(), 1.5) || ', ' || bench_gen.pick(bench_gen.cities(), 1.6) || ' '
         || lpad(floor(random() * 99999)::int::text, 5, '0'),
       bench_gen.pick(bench_gen.payments(), 1.0),
       CASE WHEN random() < 0.12 THEN upper(bench_gen.pick(bench_gen.campaigns(), 1.0)) || (5 * (1 + floor(random()*6))::int)::text END,
       CASE WHEN random() < 0.15 THEN upper(left(n.txt, 1)) || substr(n.txt, 2) || '.' END
FROM (SELECT id, 1 + floor(random() * %(customers)s)::bigint AS cust, bench_gen.pick(bench_gen.statuses(), 1.0) AS status,
             date_trunc('second', timestamptz '2020-01-01' + random() * interval '1600 days') AS ts,
             round((5 + power(random(), 2) * 800)::numeric, 2) AS sub,
             (ARRAY[0, 0, 4.99, 5.99, 9.99, 14.95])[1 + floor(random()*6)::int]::numeric AS ship, {_p()} AS pn
      FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) id) g
JOIN bench_gen.phrases n ON n.id = g.pn
"""

ITEMS_SQL = """
INSERT INTO order_items
SELECT o.id, l, 1 + floor(power(random(), 1.7) * %(products)s)::int,
       1 + floor(power(random(), 4) * 6)::int,
       round((2 + power(random(), 2) * 500)::numeric, 2),
       CASE WHEN random() < 0.2 THEN (ARRAY[5, 10, 15, 20, 25])[1 + floor(random()*5)::int] ELSE 0 END
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) o(id),
     generate_series(1, 1 + abs(hashint8(o.id)) %% 4 + CASE WHEN abs(hashint8(o.id + 7)) %% 5 = 0 THEN 3 ELSE 0 END) l
"""

EVENTS_SQL = f"""
INSERT INTO events
SELECT g.id, g.cust, g.ts, g.kind,
       md5(coalesce(g.cust, g.id)::text || g.ts::date::text)::uuid,
       CASE WHEN random() < 0.95 THEN inet '0.0.0.0' + floor(random() * 4294967295)::bigint END,
       bench_gen.pick(bench_gen.agents(), 1.8),
       CASE g.kind
         WHEN 'search' THEN '/search?q=' || replace(q.txt, ' ', '+')
         WHEN 'page_view' THEN (ARRAY['/', '/deals', '/new', '/account', '/cart', '/help/shipping', '/help/returns'])[1 + floor(random()*7)::int]
         ELSE '/products/' || g.prod || '-' || lower(replace(bench_gen.pick(bench_gen.nouns(), 1.0), ' ', '-'))
       END,
       jsonb_strip_nulls(jsonb_build_object(
           'referrer', bench_gen.pick(bench_gen.referrers(), 1.5),
           'utm', CASE WHEN random() < 0.3 THEN jsonb_build_object('source', bench_gen.pick(bench_gen.utm(), 1.3),
                                                                   'medium', bench_gen.pick(ARRAY['cpc','email','social','display'], 1.2),
                                                                   'campaign', bench_gen.pick(bench_gen.campaigns(), 1.2)) END,
           'duration_ms', floor(power(random(), 2) * 60000)::int,
           'viewport', jsonb_build_object('w', (ARRAY[390, 412, 768, 1280, 1366, 1440, 1920])[1 + floor(random()*7)::int],
                                          'h', (ARRAY[844, 915, 1024, 720, 768, 900, 1080])[1 + floor(random()*7)::int]),
           'product_id', CASE WHEN g.kind LIKE '%%cart%%' OR g.kind LIKE 'product%%' OR g.kind LIKE 'wishlist%%' THEN g.prod END,
           'quantity', CASE WHEN g.kind LIKE '%%cart%%' THEN 1 + floor(power(random(), 3) * 4)::int END,
           'price', CASE WHEN g.kind LIKE '%%cart%%' OR g.kind LIKE 'checkout%%' THEN round((2 + power(random(), 2) * 500)::numeric, 2) END,
           'query', CASE WHEN g.kind = 'search' THEN q.txt END,
           'results', CASE WHEN g.kind = 'search' THEN floor(power(random(), 2) * 400)::int END,
           'rating', CASE WHEN g.kind = 'review_submitted' THEN 1 + floor(random() * 5)::int END,
           'ab', jsonb_build_object('checkout_v2', random() < 0.5, 'reco_model', bench_gen.pick(ARRAY['baseline','als-v3','two-tower-v1'], 1.0)),
           'locale', bench_gen.pick(ARRAY['en-US','en-US','en-US','en-GB','de-DE','fr-FR','es-ES','ja-JP'], 1.0)
       )),
       CASE WHEN g.kind IN ('review_submitted', 'support_ticket') THEN upper(left(m1.txt, 1)) || substr(m1.txt, 2) || '. '
                 || upper(left(m2.txt, 1)) || substr(m2.txt, 2) || '. ' || m3.txt || '.'
            WHEN g.r < 0.35 THEN upper(left(m1.txt, 1)) || substr(m1.txt, 2) || '.' END
FROM (SELECT id, random() AS r,
             CASE WHEN random() < 0.15 THEN NULL ELSE 1 + floor(random() * %(customers)s)::bigint END AS cust,
             timestamptz '2022-01-01' + random() * interval '900 days' AS ts,
             bench_gen.pick(bench_gen.kinds(), 1.0) AS kind,
             1 + floor(power(random(), 1.7) * %(products)s)::int AS prod,
             {_p()} AS pq, {_p()} AS p1, {_p()} AS p2, {_p()} AS p3
      FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) id) g
JOIN bench_gen.phrases q ON q.id = g.pq
JOIN bench_gen.phrases m1 ON m1.id = g.p1
JOIN bench_gen.phrases m2 ON m2.id = g.p2
JOIN bench_gen.phrases m3 ON m3.id = g.p3
"""

# rows added per batch (one batch is roughly 40 MB of database)
BATCH_CUSTOMERS = 10_000
BATCH_ORDERS = 40_000
BATCH_EVENTS = 100_000
PRODUCTS_PER_GB = 50_000


@contextlib.contextmanager
def _connect(cluster: PgCluster, dbname: str) -> Iterator[psycopg.Connection[Any]]:
    with contextlib.closing(cm.connect(cluster, dbname)) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET jit = off")
        yield conn


def db_size(cluster: PgCluster, dbname: str = DB) -> int:
    return int(cluster.psql(f"SELECT pg_database_size('{dbname}')"))


def generate(cluster: PgCluster, size_gb: float) -> dict[str, Any]:
    """Create DB with at least ``size_gb`` GiB (pg_database_size) of realistic data."""
    target = int(size_gb * (1 << 30))
    t0 = time.monotonic()
    cluster.psql(f"CREATE DATABASE {DB} TEMPLATE template0")
    n_products = max(2_000, int(PRODUCTS_PER_GB * size_gb))
    with _connect(cluster, DB) as conn:
        conn.execute(SCHEMA_SQL)
        conn.execute(_helper_sql())
        conn.execute(PRODUCTS_SQL, {"n": n_products})
    state = {"customers": 0, "orders": 0, "events": 0}

    def orders_batch(conn: psycopg.Connection[Any], lo: int, hi: int, customers: int) -> None:
        conn.execute(ORDERS_SQL, {"lo": lo, "hi": hi, "customers": customers})
        conn.execute(ITEMS_SQL, {"lo": lo, "hi": hi, "products": n_products})

    def events_batch(conn: psycopg.Connection[Any], lo: int, hi: int, customers: int) -> None:
        conn.execute(EVENTS_SQL, {"lo": lo, "hi": hi, "customers": customers, "products": n_products})

    def one_batch(ca: psycopg.Connection[Any], cb: psycopg.Connection[Any]) -> None:
        c_lo = state["customers"] + 1
        state["customers"] += BATCH_CUSTOMERS
        ca.execute(CUSTOMERS_SQL, {"lo": c_lo, "hi": state["customers"]})
        o_lo, e_lo = state["orders"] + 1, state["events"] + 1
        state["orders"] += BATCH_ORDERS
        state["events"] += BATCH_EVENTS
        errors: list[BaseException] = []

        def ev() -> None:
            try:
                events_batch(cb, e_lo, state["events"], state["customers"])
            except BaseException as e:  # noqa: BLE001 - re-raised below
                errors.append(e)

        t = threading.Thread(target=ev, name="gen-events", daemon=True)
        t.start()  # two server backends at once: one per core
        orders_batch(ca, o_lo, state["orders"], state["customers"])
        t.join()
        if errors:
            raise errors[0]

    with _connect(cluster, DB) as ca, _connect(cluster, DB) as cb:
        # Load with primary keys only, then build secondary indexes and foreign keys once (as a
        # restore would), then top up with indexes in place until the size is reached.
        batches = 0
        while db_size(cluster) < target * 0.80:
            one_batch(ca, cb)
            batches += 1
            if batches % 5 == 0:
                log(f"  generated {batches} batches, {db_size(cluster) / MiB:.0f} MiB")
        log("  building indexes and foreign keys")
        for stmt in INDEX_SQL:
            ca.execute(stmt)
        for stmt in FK_SQL:
            ca.execute(stmt)
        while db_size(cluster) < target:
            one_batch(ca, cb)
            batches += 1
        ca.execute("DROP SCHEMA bench_gen CASCADE")
        log("  VACUUM (FREEZE, ANALYZE)")
        ca.execute("VACUUM (FREEZE, ANALYZE)")
        ca.execute("CHECKPOINT")
        rows = {
            t: int(ca.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # type: ignore[index]
            for t in ("customers", "products", "orders", "order_items", "events")
        }
    size = db_size(cluster)
    return {"db_size_bytes": size, "rows": rows, "batches": batches, "seconds": round(time.monotonic() - t0, 1)}
